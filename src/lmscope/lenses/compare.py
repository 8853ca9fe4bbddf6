"""Logit lens vs tuned lens on held-out text: KL(final || lens) and top-1 agreement per layer.

The held-out split of ``lmscope.data.corpus`` (standard-library files the tuned lens never saw,
chosen by a hash of their names) is cut into windows; at every position after the first
``skip_first`` (attention sink), each layer's ``resid_post`` is decoded by both lenses with the
model's own fp32 ``unembed`` and compared with the model's real output distribution.

    >>> import lmscope as ls
    >>> from lmscope.lenses.tuned_lens import TunedLens
    >>> from lmscope.lenses.compare import compare_lenses
    >>> model = ls.load_tiny("llama")
    >>> cmp = compare_lenses(model, TunedLens.identity(model), n_windows=2, seq_len=16, progress=False)
    >>> cmp.kl["tuned"] == cmp.kl["logit"]          # identity translators are the logit lens
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lmscope.core.hooks import capture
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.data.corpus import describe_corpus, token_chunks
from lmscope.experiments.report import Result, new_figure
from lmscope.lenses.tuned_lens import TunedLens


@dataclass
class LensComparison:
    """Per-layer held-out metrics of the logit lens and the tuned lens."""

    model_id: str
    layers: list[int]
    """resid_post layers, in order."""
    n_tokens: int
    """Scored positions per layer."""
    kl: dict[str, list[float]]
    """Lens name ("logit", "tuned") -> mean KL(final || lens) per layer, nats."""
    top1: dict[str, list[float]]
    """Lens name -> fraction of positions where the lens's top-1 equals the model's top-1."""
    corpus: dict[str, Any]
    """Which held-out text (lmscope.data.corpus.describe_corpus)."""

    def tuned_beats_logit(self) -> list[bool]:
        """Per layer: is the tuned lens's KL strictly lower than the logit lens's?"""
        return [t < g for t, g in zip(self.kl["tuned"], self.kl["logit"], strict=True)]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        header = ["layer", "KL logit", "KL tuned", "top-1 logit", "top-1 tuned", "tuned better"]
        better = self.tuned_beats_logit()
        rows = [[layer, round(self.kl["logit"][i], 4), round(self.kl["tuned"][i], 4), round(self.top1["logit"][i], 4),
                 round(self.top1["tuned"][i], 4), better[i]] for i, layer in enumerate(self.layers)]  # fmt: skip
        return header, rows

    def figure(self):
        """KL (log scale) and top-1 agreement per layer, both lenses in each panel."""
        fig, (a1, a2) = new_figure(1, 2, figsize=(11, 4))
        for name, style in (("logit", "o-"), ("tuned", "s-")):
            a1.plot(self.layers, [max(v, 1e-6) for v in self.kl[name]], style, ms=3, label=f"{name} lens")
            a2.plot(self.layers, self.top1[name], style, ms=3, label=f"{name} lens")
        a1.set_yscale("log")
        a1.set_ylabel("KL(final || lens), nats (log)")
        a2.set_ylabel("top-1 agreement with the model")
        for a in (a1, a2):
            a.set_xlabel("layer (resid_post)")
            a.legend(fontsize=8)
        a1.set_title(f"held-out text, {self.n_tokens} positions per layer", fontsize=9)
        return fig

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tuned_beats_logit": self.tuned_beats_logit()}

    def save(self, folder: str | Path) -> Path:
        return self.report().write(folder)

    def report(self) -> Result:
        report = Result(f"Logit lens vs tuned lens on {self.model_id}")
        report.table("Per layer, held-out text", *self.table())
        report.figure("lens_comparison", self.figure(), "KL to the model's output and top-1 agreement, per layer")
        report.data = self.to_dict()
        return report


@torch.no_grad()
def compare_lenses(
    model: Model,
    tuned: TunedLens,
    *,
    n_windows: int = 12,
    seq_len: int = 64,
    skip_first: int = 1,
    batch_size: int = 4,
    split: str = "heldout",
    seed: int = 0,
    progress: bool = True,
) -> LensComparison:
    """Score both lenses on ``n_windows`` windows of ``seq_len`` tokens of held-out corpus text."""
    from lmscope.experiments.progress import bar

    tuned._check(model)
    n = model.shape.n_layers
    sites = [Site("resid_post", layer) for layer in range(n)]
    sums = {name: torch.zeros(n, dtype=torch.float64) for name in ("kl_logit", "kl_tuned", "top_logit", "top_tuned")}
    count = 0
    chunks = list(token_chunks(model.tokenizer, seq_len, n_windows, split=split, seed=seed, prepend_bos=False))  # type: ignore[arg-type]
    starts = range(0, len(chunks), batch_size)
    for start in bar(len(starts), "compare lenses", items=starts, unit="batch", enabled=progress):
        ids = torch.stack(chunks[start : start + batch_size]).to(model.device)
        with capture(model, sites) as acts:
            final = model(ids)
        assert final is not None
        final_logp = final[:, skip_first:].float().log_softmax(-1)
        final_p, final_top = final_logp.exp(), final_logp.argmax(-1)
        count += final_top.numel()
        for layer, site in enumerate(sites):
            h = acts[site][:, skip_first:]
            for name, x in (("logit", h), ("tuned", tuned(layer, h))):
                logq = model.unembed(x).float().log_softmax(-1)
                sums[f"kl_{name}"][layer] += float((final_p * (final_logp - logq)).sum(-1).clamp(min=0).sum())
                sums[f"top_{name}"][layer] += float((logq.argmax(-1) == final_top).sum())
    return LensComparison(
        model_id=model.model_id, layers=list(range(n)), n_tokens=count,
        kl={name: (sums[f"kl_{name}"] / count).tolist() for name in ("logit", "tuned")},
        top1={name: (sums[f"top_{name}"] / count).tolist() for name in ("logit", "tuned")},
        corpus=describe_corpus(split=split, seed=seed),  # type: ignore[arg-type]
    )  # fmt: skip
