"""What does a latent mean? Top activating contexts, quantiles, density and logit effects.

For each SAE latent (a "feature") this collects the evidence a person reads to name it, the
way Anthropic's and Neuronpedia's feature dashboards do:

- **top activating contexts**: the tokens (with surrounding text) where it fires most;
- **quantiles** of its non-zero activations and examples from lower activation bands;
- **density**: the fraction of tokens on which it fires;
- **logit effects**: its decoder direction pushed through the unembedding (final-norm gain times
  ``W_U``, without the norm's data-dependent scaling) — the tokens it directly promotes and suppresses.

Latent statistics stream over activations in blocks, so any number of tokens fits in memory.

    >>> import lmscope as ls, torch
    >>> from lmscope.saes import SAE, SAEConfig
    >>> from lmscope.saes.features import latent_stats
    >>> sae = SAE(SAEConfig("topk", 16, 32, k=3))
    >>> st = latent_stats(sae, torch.randn(40, 16), torch.randint(0, 9, (4, 10)), top_k=5)
    >>> st.top_values.shape
    torch.Size([32, 5])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.core.architectures import get_module
from lmscope.core.hooks import capture
from lmscope.core.sites import SiteLike
from lmscope.saes.sae import SAE

if TYPE_CHECKING:
    from lmscope.core.model import Model

QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.99)


@dataclass
class LatentStats:
    """Per-latent statistics over a token set laid out as ``ids`` (n_chunks, seq), row-major."""

    ids: Tensor
    """(n_chunks, seq) the tokens the statistics were computed on."""
    acts: Tensor
    """(n_chunks * seq, d_in) the site activations (kept to recompute contexts)."""
    density: Tensor
    """(latent,) fraction of tokens where the latent is active."""
    max_act: Tensor
    """(latent,) largest activation."""
    top_values: Tensor
    """(latent, top_k) largest activations, descending."""
    top_index: Tensor
    """(latent, top_k) flat token index of each (divide by seq for the chunk)."""
    quantiles: Tensor
    """(latent, len(QUANTILES)) quantiles of the non-zero activations on the first ``quantile_tokens`` tokens."""
    codes: Tensor | None = None
    """(quantile_tokens, latent) codes of those tokens, if ``keep_codes`` (what :func:`sample_codes` returns)."""


def positive_quantiles(z: Tensor, probs: Tensor) -> Tensor:
    """(latent, q) quantiles (linear interpolation, as ``torch.quantile``) of each column's positive
    entries of ``z`` (tokens, latent); zeros for a column with none. One sort of the positive
    entries, grouped by column, for all columns."""
    zt = z.t()
    mask = zt > 0
    vals = zt[mask].double()  # grouped by column
    if vals.numel() == 0:
        return torch.zeros(z.shape[1], len(probs), dtype=z.dtype)
    cols = mask.nonzero()[:, 0]
    order = (cols.double() * (2 * float(vals.max()) + 1) + vals).argsort()  # by column, then by value
    s = vals[order].to(z.dtype)
    c = mask.sum(1)
    first = torch.cumsum(c, 0) - c
    pos = probs[:, None].double() * (c - 1).clamp(min=0)[None].double()  # (q, latent), within the positives
    last = s.numel() - 1
    lo, hi = (first + pos.floor().long()).clamp(max=last), (first + pos.ceil().long()).clamp(max=last)
    frac = (pos - pos.floor()).to(z.dtype)
    out = s[lo] * (1 - frac) + s[hi] * frac
    return torch.where(c[None] > 0, out, torch.zeros_like(out)).t().contiguous()


@torch.no_grad()
def latent_stats(sae: SAE, acts: Tensor, ids: Tensor, *, top_k: int = 20, block: int = 4096,
                 quantile_tokens: int = 20_000, keep_codes: bool = False) -> LatentStats:  # fmt: skip
    """Stream ``acts`` (tokens, d_in) through ``sae``; ``ids`` (n_chunks, seq) gives their tokens.

    ``keep_codes`` keeps the codes of the first ``quantile_tokens`` tokens (dashboards reuse them)."""
    if acts.shape[0] != ids.numel():
        raise ValueError(f"{acts.shape[0]} activations but ids hold {ids.numel()} tokens; they must align")
    sae.eval()
    d = sae.cfg.d_sae
    k = min(top_k, acts.shape[0])
    count = torch.zeros(d)
    top_v = torch.full((k, d), -torch.inf)
    top_i = torch.zeros((k, d), dtype=torch.long)
    qs = []
    for start in range(0, acts.shape[0], block):
        z = sae.encode(acts[start : start + block].float().to(sae.device)).cpu()
        count += (z > 0).sum(0)
        idx = torch.arange(start, start + z.shape[0])[:, None].expand_as(z)
        v, j = torch.cat([top_v, z]).topk(k, dim=0)
        top_i = torch.cat([top_i, idx]).gather(0, j)
        top_v = v
        if start < quantile_tokens:
            qs.append(z)
    sample = torch.cat(qs)[:quantile_tokens]
    quant = positive_quantiles(sample, torch.tensor(QUANTILES))
    return LatentStats(ids, acts, count / acts.shape[0], top_v[0].clamp(min=0), top_v.t().clamp(min=0), top_i.t(), quant,
                       sample if keep_codes else None)  # fmt: skip


@torch.no_grad()
def harvest_acts(model: Model, site: SiteLike, chunks: Tensor, *, batch_size: int = 8,
                 skip_first: int = 1) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Activations (tokens, width) at ``site`` over ``chunks`` (stopping the pass after the site) and their ids."""
    rows = []
    for i in range(0, chunks.shape[0], batch_size):
        with capture(model, [site], stop_early=True, device="cpu") as acts:
            model(chunks[i : i + batch_size])
        a = acts[site][:, skip_first:]
        rows.append(a.reshape(-1, a.shape[-1]).float())
    return torch.cat(rows), chunks[:, skip_first:].contiguous()


@torch.no_grad()
def logit_effects(model: Model, sae: SAE, latents: list[int] | Tensor, *, top: int = 10) -> dict[int, dict[str, list]]:
    """Tokens each latent's decoder direction promotes and suppresses: (d * final-norm gain) @ W_U."""
    w = sae.W_dec[torch.as_tensor(latents)].float() / sae.cfg.scaling_factor
    if model.arch.final_norm is not None:
        norm = get_module(model.hf, model.arch.final_norm)
        gain = getattr(norm, "weight", None)
        if gain is not None:
            # Gemma's RMSNorm multiplies by (1 + weight); the others by weight.
            offset = 1.0 if "Gemma" in type(norm).__name__ else 0.0
            w = w * (gain.float() + offset)
    logits = model.unembed(w.to(model.device, model.dtype), normalize=False).float().cpu()
    out = {}
    for row, lat in enumerate(torch.as_tensor(latents).tolist()):
        up = logits[row].topk(top)
        down = (-logits[row]).topk(top)
        out[lat] = {
            "promoted": [(model.tokenizer.decode([int(i)]), float(v)) for v, i in zip(up.values, up.indices, strict=True)],
            "suppressed": [(model.tokenizer.decode([int(i)]), float(-v)) for v, i in zip(down.values, down.indices, strict=True)],
        }
    return out


@dataclass
class Context:
    """One activating example: tokens around the peak with the latent's activation on each."""

    tokens: list[str]
    values: list[float]
    peak: int
    """Index in ``tokens`` of the activating token."""
    value: float


@torch.no_grad()
def contexts(sae: SAE, stats: LatentStats, latent: int, flat_indices: list[int], *, tokenizer,
             before: int = 12, after: int = 4) -> list[Context]:  # fmt: skip
    """Recompute the latent's activation on the text around each flat token index."""
    seq = stats.ids.shape[1]
    spans = []
    for flat in flat_indices:
        chunk, pos = divmod(int(flat), seq)
        spans.append((chunk, pos, max(0, pos - before), min(seq, pos + after + 1)))
    if not spans:
        return []
    rows = torch.cat([stats.acts[c * seq + lo : c * seq + hi] for c, _, lo, hi in spans])
    codes = sae.encode(rows.float().to(sae.device))[:, latent].cpu().split([hi - lo for _, _, lo, hi in spans])
    out = []
    for (chunk, pos, lo, hi), z in zip(spans, codes, strict=True):  # one encode for every context
        toks = [tokenizer.decode([int(t)]) for t in stats.ids[chunk, lo:hi]]
        out.append(Context(toks, [float(v) for v in z], pos - lo, float(z[pos - lo])))
    return out


def top_contexts(sae: SAE, stats: LatentStats, latent: int, *, tokenizer, n: int = 10) -> list[Context]:
    """The ``n`` strongest activating contexts of ``latent``."""
    keep = [int(i) for v, i in zip(stats.top_values[latent], stats.top_index[latent], strict=True) if v > 0][:n]
    return contexts(sae, stats, latent, keep, tokenizer=tokenizer)


@torch.no_grad()
def sample_codes(sae: SAE, stats: LatentStats, n_tokens: int = 20_000) -> Tensor:
    """(n_tokens, latent) codes of the first ``n_tokens`` tokens (encode once, reuse for every latent)."""
    if stats.codes is not None and stats.codes.shape[0] == min(stats.acts.shape[0], n_tokens):
        return stats.codes
    return sae.encode(stats.acts[: min(stats.acts.shape[0], n_tokens)].float().to(sae.device)).cpu()


@torch.no_grad()
def band_contexts(sae: SAE, stats: LatentStats, latent: int, *, tokenizer, lo: float, hi: float, n: int = 5,
                  seed: int = 0, codes: Tensor | None = None) -> list[Context]:  # fmt: skip
    """Up to ``n`` random examples whose activation lies in [lo, hi), drawn from ``codes`` (default: :func:`sample_codes`)."""
    z = (sample_codes(sae, stats) if codes is None else codes)[:, latent]
    where = ((z >= lo) & (z < hi)).nonzero()[:, 0]
    if where.numel() == 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    pick = where[torch.randperm(where.numel(), generator=gen)[:n]]
    return contexts(sae, stats, latent, pick.tolist(), tokenizer=tokenizer)
