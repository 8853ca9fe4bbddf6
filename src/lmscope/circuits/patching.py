"""Activation patching: which activations carry the difference between a clean and a corrupted run.

Run the model on the corrupted prompt, but overwrite one activation (one site, optionally one
position and/or one head) with its value from the clean run, and see how much of the clean
behaviour comes back (Meng et al. 2022 "causal tracing"; Wang et al. 2022; Heimersheim & Nanda
2024 "How to use and interpret activation patching"). The score is the task metric normalised
between the two runs: ``(m_patched - m_corrupt) / (m_clean - m_corrupt)``, 1 = fully restored.
``direction="noise"`` does the converse (corrupt activation into the clean run; 0 = destroyed).

One engine, :func:`patch_sweep`, takes a list of :class:`PatchSpec` and evaluates them K at a time
in one batched forward: the corrupted batch is stacked K times and each copy gets its own patch
through a per-row edit. The unpatched prefix is not recomputed: the target runs once and each
forward starts at its patches' layer and position (:class:`~lmscope.core.prefix.Prefix`).
The named variants only build spec lists and reshape the result to a grid:
:func:`resid_by_layer_pos`, :func:`layer_outputs` (attn_out and mlp_out by layer),
:func:`heads`, :func:`head_by_pos`. :func:`heatmap` draws any grid.

    import lmscope as ls
    from lmscope.circuits import ioi_task, filter_correct, patching
    model = ls.load()
    task = filter_correct(model, ioi_task(model, n=8)).task
    grid = patching.resid_by_layer_pos(model, task)
    grid.values.shape                                  # (layers, positions)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.prefix import Prefix, start_layer
from lmscope.core.sites import Site

from .graph import repeat_batch

if TYPE_CHECKING:
    from lmscope.core.inputs import Batch
    from lmscope.core.model import Model

    from .tasks import TaskPairs

Metric = Callable[[Tensor], Tensor]
Direction = Literal["denoise", "noise"]


@dataclass(frozen=True)
class PatchSpec:
    """One patch: the site (kind, layer), optionally one absolute position and one head."""

    site: Site
    position: int | None = None
    head: int | None = None

    def __post_init__(self) -> None:
        if self.site.head is not None:
            raise ValueError("give the head as PatchSpec(head=...), not inside the Site")
        if self.head is not None and self.site.kind not in ("attn_z", "q", "k", "v"):
            raise ValueError(f"a head index needs a per-head site (attn_z, q, k, v), got {self.site.kind}")

    def select(self, x: Tensor) -> tuple:
        """Index tuple into a (rows, seq, ...) tensor for this patch."""
        pos = slice(None) if self.position is None else self.position
        return (slice(None), pos) if self.head is None else (slice(None), pos, self.head)


@dataclass
class PatchResult:
    """Metric after each patch, raw and normalised."""

    specs: list[PatchSpec]
    """The patches, in order."""
    values: Tensor
    """(spec,) mean metric over the examples after the patch."""
    normalized: Tensor
    """(spec,) (values - corrupt) / (clean - corrupt), for both directions; NaN if clean == corrupt."""
    clean: float
    """Mean metric on the clean prompts."""
    corrupt: float
    """Mean metric on the corrupted prompts."""
    seconds: float = 0.0
    """Wall time of the sweep (with the stored target pass, without the source run)."""
    forwards: int = 0
    """Batched forward passes used."""


@dataclass
class PatchGrid:
    """A sweep reshaped for a heatmap."""

    values: Tensor
    """(rows, cols) normalised scores."""
    rows: list[str]
    """Row labels."""
    cols: list[str]
    """Column labels."""
    result: PatchResult
    """The flat sweep."""
    title: str = ""


def _run_metric(model: Model, batch: Batch, metric: Metric) -> float:
    return float(metric(model(batch)).mean())


def patch_sweep(
    model: Model,
    clean: Batch,
    corrupt: Batch,
    specs: Sequence[PatchSpec],
    metric: Metric,
    *,
    copies: int = 16,
    direction: Direction = "denoise",
    progress: Callable[[int, int], None] | None = None,
    reuse: bool = True,
    logits_to_keep: int = 0,
) -> PatchResult:
    """Evaluate every patch in ``specs``, ``copies`` patches per batched forward.

    ``clean`` and ``corrupt`` must have the same shape (positions line up); ``metric`` maps
    (rows, seq, vocab) logits to (rows,) with row r being example r % n.

    With ``reuse`` (the default) the patched run is not recomputed where it cannot differ from the
    unpatched one: the target batch runs once (:class:`~lmscope.core.prefix.Prefix`), and each
    forward starts at its patches' layer and, for patches at one position, at that position, from
    the stored layer input and KV cache. The values equal ``reuse=False`` (which runs every copy
    from the embedding). ``logits_to_keep=1`` computes logits for the last position only, for
    metrics that read nothing else (a task's metric reads the last position).
    """
    if clean.shape != corrupt.shape:
        raise ValueError(f"clean and corrupt batches differ in shape: {clean.shape} vs {corrupt.shape}")
    if copies < 1:
        raise ValueError("copies must be >= 1")
    specs = list(specs)
    if not specs:
        raise ValueError("no patches to evaluate")
    source_batch, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    n, seq = clean.shape
    for s in specs:
        if s.position is not None and not -seq <= s.position < seq:
            raise IndexError(f"patch position {s.position} out of range for sequences of {seq} tokens")
    sites = list(dict.fromkeys(s.site for s in specs))
    with capture(model, sites) as acts:
        m_source = _run_metric(model, source_batch, metric)
    src = {s: acts[s] for s in sites}
    t0 = time.perf_counter()
    if reuse:
        L = model.shape.n_layers
        prefix = Prefix(model, target, layers={start_layer(s.site, L) for s in specs})
        m_target = float(metric(prefix.logits).mean())
        plan_chunks = _chunks(specs, L, seq, copies, positions=prefix.reuses_positions)
    else:
        m_target = _run_metric(model, target, metric)
        plan_chunks = [(0, 0, list(range(lo, min(lo + copies, len(specs))))) for lo in range(0, len(specs), copies)]
    m_clean, m_corrupt = (m_source, m_target) if direction == "denoise" else (m_target, m_source)

    vals = torch.empty(len(specs))
    done = 0
    for layer, pos, members in plan_chunks:
        chunk = [specs[i] for i in members]
        k = len(chunk)
        with intervene(model, _patch_plan(chunk, src, n, pos)):
            if reuse:
                logits = prefix.forward(copies=k, layer=layer, position=pos, logits_to_keep=logits_to_keep)
                if pos and not logits_to_keep:  # positions before the start are the target's own logits
                    logits = torch.cat([prefix.logits[torch.arange(k * n) % n, :pos], logits], dim=1)
            else:
                logits = model(repeat_batch(target, k))
        vals[members] = metric(logits).reshape(k, n).mean(1).float().cpu()
        done += k
        if progress is not None:
            progress(done, len(specs))
    forwards = len(plan_chunks)
    denom = m_clean - m_corrupt
    # equal baselines (e.g. clean patched into clean) leave the normalised score undefined: NaN
    norm = (vals - m_corrupt) / denom if abs(denom) > 1e-8 else torch.full_like(vals, float("nan"))
    return PatchResult(specs, vals, norm, m_clean, m_corrupt, time.perf_counter() - t0, forwards)


def _start(spec: PatchSpec, n_layers: int, seq: int, positions: bool) -> tuple[int, int]:
    """Where a forward carrying this patch may start: its layer, and its position if it has one."""
    layer = start_layer(spec.site, n_layers)
    if not positions or spec.position is None or spec.site.kind in ("embed", "final_norm", "logits"):
        return layer, 0
    return layer, spec.position % seq


def _chunks(
    specs: Sequence[PatchSpec], n_layers: int, seq: int, copies: int, *, positions: bool
) -> list[tuple[int, int, list[int]]]:
    """Patches grouped into forwards (start layer, start position, spec indices), at most ``copies`` each.

    Patches of one start layer share forwards; within a layer they are sorted by position and cut
    where it is cheapest. A forward of k copies from position p costs k * (seq - p) token-rows plus
    a fixed cost, taken as one copy's full length: the partition minimising the total is found by
    dynamic programming (positions before a forward's start are recomputed for its later copies).
    """
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for i, s in enumerate(specs):
        layer, pos = _start(s, n_layers, seq, positions)
        by_layer.setdefault(layer, []).append((pos, i))
    out = []
    for layer in sorted(by_layer):
        group = sorted(by_layer[layer])
        m = len(group)
        best, cut = [0.0] + [float("inf")] * m, [0] * (m + 1)
        for end in range(1, m + 1):
            for lo in range(max(0, end - copies), end):
                cost = best[lo] + seq + (end - lo) * (seq - group[lo][0])
                if cost < best[end]:
                    best[end], cut[end] = cost, lo
        bounds, end = [], m
        while end:
            bounds.append((cut[end], end))
            end = cut[end]
        for lo, hi in reversed(bounds):
            out.append((layer, group[lo][0], [i for _, i in group[lo:hi]]))
    return out


def _patch_plan(chunk: Sequence[PatchSpec], src: dict[Site, Tensor], n: int, start: int) -> dict[Site, edits.Edit]:
    """One edit per site writing each copy's patch; ``start`` is the first position the forward runs."""
    plan: dict[Site, edits.Edit] = {}
    for site in dict.fromkeys(s.site for s in chunk):
        mine = [(c, s) for c, s in enumerate(chunk) if s.site == site]
        value = src[site][:, start:] if start else src[site]

        def fn(x: Tensor, mine=mine, value=value) -> Tensor:
            x = x.clone()
            for c, s in mine:
                rows = slice(c * n, (c + 1) * n)
                pos = slice(None) if s.position is None else (s.position % (start + x.shape[1])) - start
                idx = (slice(None), pos) if s.head is None else (slice(None), pos, s.head)
                x[rows][idx] = value[idx].to(x.dtype)
            return x

        plan[site] = edits.custom(fn)
    return plan


def _task_batches(model: Model, task: TaskPairs) -> tuple[Batch, Batch]:
    return task.batches(model)


def _labels(model: Model, batch: Batch) -> list[str]:
    toks = model.to_str_tokens(batch.input_ids[0])
    return [f"{i}:{t}" for i, t in enumerate(toks)]


def resid_by_layer_pos(
    model: Model, task: TaskPairs, *, layers: Sequence[int] | None = None, kind: str = "resid_post", **kw
) -> PatchGrid:
    """Residual stream (``resid_post`` by default) of each layer x position."""
    clean, corrupt = _task_batches(model, task)
    layers = list(layers if layers is not None else range(model.shape.n_layers))
    seq = clean.shape[1]
    specs = [PatchSpec(Site(kind, layer), p) for layer in layers for p in range(seq)]
    res = patch_sweep(model, clean, corrupt, specs, task.metric, **{"logits_to_keep": 1, **kw})
    return PatchGrid(res.normalized.reshape(len(layers), seq), [str(layer) for layer in layers], _labels(model, clean), res,
                     f"{kind} by layer x position")  # fmt: skip


def layer_outputs(model: Model, task: TaskPairs, *, kinds: Sequence[str] = ("attn_out", "mlp_out"), **kw) -> PatchGrid:
    """Attention and MLP outputs of each layer (all positions)."""
    clean, corrupt = _task_batches(model, task)
    L = model.shape.n_layers
    specs = [PatchSpec(Site(k, layer)) for k in kinds for layer in range(L)]
    res = patch_sweep(model, clean, corrupt, specs, task.metric, **{"logits_to_keep": 1, **kw})
    return PatchGrid(res.normalized.reshape(len(kinds), L), list(kinds), [str(layer) for layer in range(L)], res,
                     "attention and MLP output by layer")  # fmt: skip


def heads(model: Model, task: TaskPairs, *, positions: int | None = None, **kw) -> PatchGrid:
    """Every attention head's output (``attn_z``), all positions (or one): (layer, head)."""
    clean, corrupt = _task_batches(model, task)
    L, H = model.shape.n_layers, model.shape.n_heads
    specs = [PatchSpec(Site("attn_z", layer), positions, h) for layer in range(L) for h in range(H)]
    res = patch_sweep(model, clean, corrupt, specs, task.metric, **{"logits_to_keep": 1, **kw})
    return PatchGrid(res.normalized.reshape(L, H), [str(layer) for layer in range(L)], [str(h) for h in range(H)], res,
                     "attention heads (attn_z)")  # fmt: skip


def head_by_pos(model: Model, task: TaskPairs, *, layers: Sequence[int] | None = None, **kw) -> PatchGrid:
    """Each head x position (rows "layer.head")."""
    clean, corrupt = _task_batches(model, task)
    layers = list(layers if layers is not None else range(model.shape.n_layers))
    H, seq = model.shape.n_heads, clean.shape[1]
    specs = [PatchSpec(Site("attn_z", layer), p, h) for layer in layers for h in range(H) for p in range(seq)]
    res = patch_sweep(model, clean, corrupt, specs, task.metric, **{"logits_to_keep": 1, **kw})
    return PatchGrid(res.normalized.reshape(len(layers) * H, seq), [f"{la}.{h}" for la in layers for h in range(H)],
                     _labels(model, clean), res, "head x position")  # fmt: skip


def heatmap(grid: PatchGrid, *, title: str | None = None, xlabel: str = "", ylabel: str = "layer"):
    """A diverging heatmap of a grid (red = restores the clean behaviour); returns the figure."""
    from lmscope.experiments.report import new_figure

    v = grid.values.float().numpy()
    h = max(3.0, min(12.0, 0.22 * len(grid.rows) + 1.5))
    w = max(4.0, min(16.0, 0.45 * len(grid.cols) + 2.0))
    fig, ax = new_figure(figsize=(w, h))
    lim = max(1e-6, float(abs(v).max()))
    im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
    ax.set_yticks(range(len(grid.rows)), grid.rows, fontsize=7)
    ax.set_xticks(range(len(grid.cols)), grid.cols, rotation=70, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or grid.title)
    fig.colorbar(im, ax=ax, label="normalised metric")
    return fig
