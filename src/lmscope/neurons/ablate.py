"""Steps 2 and 3 of the single-neuron workflow: remove a neuron, then turn it up and down.

**Ablation** replaces neuron activations (``mlp_post`` of one layer) at every position by

- ``zero``: 0 (simple, but 0 may be far from anything the neuron normally outputs),
- ``mean``: the neuron's mean over a reference corpus (the seeds' preferred choice),
- ``resample``: the neuron's value on a random token of other inputs (keeps the distribution),

and measures, against the clean run, on the scored positions: KL(clean || ablated) of the
next-token distribution, the change in log-probability of the actual next token, and how often
the top-1 prediction changes. The seed's claim to test: one neuron rarely changes the output.
Every effect comes with a **random-neuron control**: the same edit on as many randomly chosen
neurons of the same layer, repeated ``n_controls`` times.

**Dose-response**: multiply (``scale``) or set (``set``) the neurons' activation across a range
of values and plot a behaviour metric against it, with the random-neuron control curve.

    >>> import lmscope as ls, torch
    >>> from lmscope.neurons.ablate import ablate
    >>> m = ls.load_tiny("llama"); ids = torch.randint(0, 100, (2, 12))
    >>> r = ablate(m, 0, [3], ids, modes=("zero",), n_controls=2, reference=ids)
    >>> r.effects["zero"].kl >= 0
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.edits import Edit, Positions
from lmscope.core.hooks import capture, intervene
from lmscope.core.inputs import Batch
from lmscope.core.prefix import Prefix, start_layer
from lmscope.core.sites import Site

if TYPE_CHECKING:
    from lmscope.core.model import Model

MODES = ("zero", "mean", "resample")


@dataclass
class Effect:
    """Effect of an edit on next-token predictions at the scored positions (means)."""

    kl: float
    """KL(clean || edited), nats."""
    dlogp: float
    """log p_edited(next token) - log p_clean(next token)."""
    top1_change: float
    """Fraction of positions whose top-1 token changed."""
    token_set_prob: float | None = None
    """Mean probability mass on ``token_set`` under the edited run, when one was given."""


@torch.no_grad()
def layer_reference(model: Model, layer: int, ids: Tensor, *, n_pool: int = 4096, skip_first: int = 1,
                    seed: int = 0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Mean (d_mlp,) and a resample pool (n_pool, d_mlp) of ``mlp_post`` at ``layer`` over reference windows ``ids``."""
    site = Site("mlp_post", layer)
    rows = []
    for i in range(0, ids.shape[0], 8):
        with capture(model, [site], stop_early=True, device="cpu") as acts:
            model(ids[i : i + 8])
        a = acts[site][:, skip_first:]
        rows.append(a.reshape(-1, a.shape[-1]).float())
    x = torch.cat(rows)
    gen = torch.Generator().manual_seed(seed)
    return x.mean(0), x[torch.randperm(x.shape[0], generator=gen)[:n_pool]]


def _edit(mode: str, neurons: list[int], mean: Tensor, pool: Tensor, seed: int, positions: Positions = "all") -> Edit:
    idx = torch.tensor(neurons)
    if mode == "zero":
        return edits.zero(index=neurons, positions=positions)
    if mode == "mean":
        return edits.mean_ablate(mean[idx], index=neurons, positions=positions)
    if mode == "resample":
        return edits.resample(pool[:, idx], seed=seed, index=neurons, positions=positions)
    raise ValueError(f"unknown ablation mode {mode!r}; choose from {MODES}")


class _Scorer:
    """Clean logits cached once; scores any edit at ``site`` against them."""

    def __init__(self, model: Model, ids: Tensor, mask: Tensor | None, token_set: list[int] | None, batch_size: int,
                 site: Site):  # fmt: skip
        self.model, self.ids, self.batch_size, self.site = model, ids, batch_size, site
        m = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool().clone()
        m[:, -1] = False  # the last position has no next token to score
        self.mask = m
        self.token_set = None if token_set is None else torch.tensor(token_set)
        self.start = start_layer(site, model.shape.n_layers)
        # the clean pass of each batch, kept: edited passes start at the site's layer from its stored input
        self.prefixes, self.clean = [], []
        for i in range(0, ids.shape[0], batch_size):
            prefix = Prefix(model, Batch.unpadded(ids[i : i + batch_size].to(model.device)), layers=[self.start],
                            positions=False)  # fmt: skip
            self.clean.append(self._scored(i, prefix.logits))
            prefix.logits = None  # kept once, as the log-probabilities above
            self.prefixes.append(prefix)

    def _scored(self, i: int, logits: Tensor) -> Tensor:
        return logits.float().log_softmax(-1)[self.mask[i : i + self.batch_size]].cpu()

    def _logp(self, b: int, i: int, edit: Edit) -> Tensor:
        with intervene(self.model, {self.site: edit}):
            return self._scored(i, self.prefixes[b].forward(copies=1, layer=self.start))

    def score(self, edit: Edit | None) -> Effect:
        kl, dlogp, top1, tset, n = 0.0, 0.0, 0.0, 0.0, 0
        targets = self.ids[:, 1:][self.mask[:, :-1]]
        t0 = 0
        for b, i in enumerate(range(0, self.ids.shape[0], self.batch_size)):
            clean = self.clean[b]
            new = clean if edit is None else self._logp(b, i, edit)
            tg = targets[t0 : t0 + clean.shape[0]].to(clean.device)
            t0 += clean.shape[0]
            rows = torch.arange(clean.shape[0])
            kl += float((clean.exp() * (clean - new)).sum(-1).sum())
            dlogp += float((new[rows, tg] - clean[rows, tg]).sum())
            top1 += float((new.argmax(-1) != clean.argmax(-1)).sum())
            if self.token_set is not None:
                tset += float(new[:, self.token_set].exp().sum(-1).sum())
            n += clean.shape[0]
        if n == 0:
            raise ValueError("no scored positions: the mask selects nothing (the last position is never scored)")
        return Effect(kl / n, dlogp / n, top1 / n, None if self.token_set is None else tset / n)


@dataclass
class AblationResult:
    """Effects of ablating ``neurons`` and of random-neuron controls, per mode."""

    layer: int
    neurons: list[int]
    effects: dict[str, Effect]
    controls: dict[str, list[Effect]] = field(default_factory=dict)
    """Per mode: one Effect per random draw of the same number of neurons."""
    control_neurons: list[list[int]] = field(default_factory=list)


def _random_sets(width: int, exclude: list[int], size: int, n: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([i for i in range(width) if i not in set(exclude)])
    return [allowed[torch.randperm(len(allowed), generator=gen)[:size]].tolist() for _ in range(n)]


def ablate(model: Model, layer: int, neurons: list[int], ids: Tensor, *, modes: tuple[str, ...] = MODES,
           reference: Tensor | None = None, score_mask: Tensor | None = None, n_controls: int = 5,
           seed: int = 0, batch_size: int = 8, positions: Positions = "all",
           progress: Callable[[str], None] | None = None) -> AblationResult:  # fmt: skip
    """Ablate ``neurons`` of ``mlp_post`` at ``layer`` on windows ``ids`` (n, seq), scoring ``score_mask`` positions.

    ``reference`` windows give the mean and the resample pool (use other text than ``ids``);
    ``positions`` says which token positions are ablated (see ``lmscope.core.edits``);
    ``progress`` hears one line per finished scoring run.
    """
    site = Site("mlp_post", layer)
    width = model.site_width(site)
    if not neurons or min(neurons) < 0 or max(neurons) >= width:
        raise IndexError(f"neurons must be a non-empty list in [0, {width}), got {neurons}")
    mean, pool = layer_reference(model, layer, ids if reference is None else reference, seed=seed)
    scorer = _Scorer(model, ids, score_mask, None, batch_size, site)
    sets = _random_sets(width, neurons, len(neurons), n_controls, seed)
    res = AblationResult(layer, list(neurons), {}, {}, sets)
    total, done = len(modes) * (1 + len(sets)), 0
    for mode in modes:
        scored = []
        for s in [list(neurons), *sets]:
            if progress:
                progress(f"{mode} ablation: scoring run {done + 1}/{total}")
            scored.append(scorer.score(_edit(mode, s, mean, pool, seed, positions)))
            done += 1
        res.effects[mode], res.controls[mode] = scored[0], scored[1:]
    return res


@dataclass
class DoseResponse:
    """A behaviour metric as the neurons' activation is scaled or set across ``values``."""

    layer: int
    neurons: list[int]
    mode: str
    values: list[float]
    effects: list[Effect]
    controls: list[list[Effect]]
    """controls[c][v]: random set c at value v."""


def dose_response(model: Model, layer: int, neurons: list[int], ids: Tensor, *, values: tuple[float, ...] = (
                  -2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0), mode: str = "scale", score_mask: Tensor | None = None,
                  token_set: list[int] | None = None, n_controls: int = 2, seed: int = 0,
                  batch_size: int = 8, progress: Callable[[str], None] | None = None) -> DoseResponse:  # fmt: skip
    """Multiply (``scale``) or set (``set``) the neurons to each of ``values`` and score each run."""
    if mode not in ("scale", "set"):
        raise ValueError(f"mode must be 'scale' or 'set', got {mode!r}")
    site = Site("mlp_post", layer)
    scorer = _Scorer(model, ids, score_mask, token_set, batch_size, site)

    def edit(v: float, ns: list[int]) -> Edit:
        return edits.scale(v, index=ns) if mode == "scale" else edits.replace(torch.full((len(ns),), float(v)), index=ns)

    sets = _random_sets(model.site_width(site), neurons, len(neurons), n_controls, seed)

    def scored(v: float, ns: list[int], n: int) -> Effect:
        if progress:
            progress(f"dose-response: run {n + 1}/{len(values) * (1 + len(sets))}")
        return scorer.score(edit(v, ns))

    effects = [scored(v, neurons, i) for i, v in enumerate(values)]
    controls = [[scored(v, s, (c + 1) * len(values) + i) for i, v in enumerate(values)] for c, s in enumerate(sets)]
    return DoseResponse(layer, list(neurons), mode, list(values), effects, controls)


def dose_figure(res: DoseResponse, metric: str = "token_set_prob", label: str = ""):
    """Line plot of ``metric`` (an :class:`Effect` field) against the dose, with random-neuron controls."""
    from lmscope.experiments.report import new_figure

    fig, ax = new_figure(figsize=(6, 3.6))
    ax.plot(res.values, [getattr(e, metric) for e in res.effects], "o-", color="#c44e52",
            label=label or f"L{res.layer} neurons {res.neurons}")  # fmt: skip
    for i, ctl in enumerate(res.controls):
        ax.plot(res.values, [getattr(e, metric) for e in ctl], "s--", color="grey", alpha=0.6,
                label="random neurons" if i == 0 else None)  # fmt: skip
    ax.axvline(1.0 if res.mode == "scale" else 0.0, color="k", lw=0.5)
    ax.set_xlabel("activation multiplier" if res.mode == "scale" else "activation value")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    return fig
