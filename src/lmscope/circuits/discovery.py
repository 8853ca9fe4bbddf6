"""Circuit discovery: the smallest part of the model that still does the task.

Two pruning methods over the component graph of :mod:`.graph` (writers: embedding, heads, MLPs;
readers: attention inputs, MLP inputs, logits), both evaluated with exact edge ablation:

- :func:`acdc` — repeated removal with a threshold (Conmy et al. 2023, "Towards Automated Circuit
  Discovery"). Walk the graph from the logits backwards; try removing each remaining edge into the
  current reader; if the task metric moves by less than ``threshold`` (normalised by the clean -
  ablated gap) the edge goes. ``level="nodes"`` removes whole heads / MLPs (all their outgoing
  edges) layer by layer instead, which is the fast first pass on a real model.
  By default (fast) the candidate edges of one reader (or the nodes of one layer) are evaluated
  together, K per batched forward, each against the same current circuit, and all whose change is
  under the threshold are removed at once, which can add many small effects into a large one.
  ``sequential=True`` is ACDC as published: one candidate at a time, each tried against the
  circuit left by every removal before it, removed when the metric moves by less than the
  threshold (in absolute value, as ACDC's code does for a logit-difference metric, so a part whose
  removal *raises* the metric stays), one forward per candidate.
  Further simplifications, on purpose: (2) no path patching: an
  edge is a direct writer -> reader connection, and cutting it replaces only that contribution;
  (3) heads of one layer share their reader (their q/k/v come from one normed input).
  ``candidates`` restricts the search (e.g. the top edges by edge attribution); the rest start cut.
- :func:`learned_mask` — a sigmoid mask per node (or per edge) trained by gradient descent to keep
  the metric at its clean value with an L1 sparsity penalty (Cao et al. 2021; the mask pruning of
  Gao et al. 2025 "Weight-sparse transformers have interpretable circuits").

Ablation: "mean" (mean writer output over the reference prompts, per position), "zero",
"resample" (another example's output) or "corrupt" (the corrupted prompt's own output: ACDC's
default). The result is a :class:`~.circuit.Circuit`; :func:`faithfulness_curve` keeps the top-k
edges of a ranking and measures how much of the metric survives.

    from lmscope.circuits import discovery
    circ = discovery.acdc(model, task, level="nodes", threshold=0.02)
    circ.summary()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .circuit import Circuit
from .graph import ComponentGraph, ablation_values, edge_edits, repeat_batch, writer_outputs

if TYPE_CHECKING:
    from lmscope.core.inputs import Batch
    from lmscope.core.model import Model

    from .tasks import TaskPairs

Ablation = Literal["mean", "zero", "resample", "corrupt"]


@dataclass
class Setup:
    """What every masked evaluation of one task needs (built once)."""

    model: Model
    task: TaskPairs
    graph: ComponentGraph
    batch: Batch
    """The clean prompts (the circuit must do the task on them)."""
    ablated: Tensor
    """Replacement writer outputs (see ``graph.ablation_values``)."""
    valid: Tensor
    """(writer, reader) edges that exist."""
    clean: float
    """Mean metric of the full model."""
    empty: float
    """Mean metric with every edge cut."""
    ablation: str = "mean"
    """How cut writers are replaced."""

    def evaluate(self, removed: Tensor, *, copies: int = 16) -> Tensor:
        """(k, writer, reader) cut masks -> (k,) mean metric, ``copies`` masks per forward."""
        n = self.batch.shape[0]
        out = []
        with torch.no_grad():
            for lo in range(0, removed.shape[0], copies):
                chunk = removed[lo : lo + copies].float()
                k = chunk.shape[0]
                rows = chunk.repeat_interleave(n, dim=0)  # row c*n + i carries mask c
                with edge_edits(self.model, self.graph, removed=rows, ablated=self.ablated):
                    out.append(self.task.metric(self.model(repeat_batch(self.batch, k))).reshape(k, n).mean(1))
        return torch.cat(out).cpu()

    def normalize(self, m: Tensor | float) -> Tensor | float:
        """(m - empty) / (clean - empty): 1 = the full model's metric, 0 = everything ablated."""
        return (m - self.empty) / (self.clean - self.empty)


def setup(model: Model, task: TaskPairs, *, ablation: Ablation = "mean", seed: int = 0) -> Setup:
    """Precompute reference writer outputs and the clean / fully-ablated metrics."""
    graph = ComponentGraph.of(model)
    clean, corrupt = task.batches(model)
    ablated = ablation_values(writer_outputs(model, corrupt), ablation, seed=seed)
    valid = graph.valid()
    s = Setup(model, task, graph, clean, ablated, valid, float(task.metric(model(clean)).mean()), 0.0, ablation)
    s.empty = float(s.evaluate(valid[None])[0])
    if abs(s.clean - s.empty) < 1e-6:
        raise ValueError("ablating every edge does not change the metric; nothing to discover")
    return s


def node_removed(s: Setup, keep_writers: Tensor) -> Tensor:
    """(writer,) bool kept nodes (embedding always kept) -> (writer, reader) cut mask."""
    keep = keep_writers.clone()
    keep[0] = True
    return s.valid & ~keep[:, None]


def acdc(
    model: Model,
    task: TaskPairs,
    *,
    level: Literal["nodes", "edges"] = "edges",
    threshold: float = 0.02,
    ablation: Ablation = "corrupt",
    candidates: Tensor | None = None,
    copies: int = 16,
    progress: Callable[[str], None] | None = None,
    prepared: Setup | None = None,
    sequential: bool = False,
) -> Circuit:
    """Prune by repeated removal with a threshold on the normalised metric change (see module doc)."""
    s = prepared or setup(model, task, ablation=ablation)
    g = s.graph
    scores = torch.full((g.n_writers, g.n_readers), float("nan"))
    gap = s.clean - s.empty
    if sequential:
        return _acdc_sequential(s, level, threshold, candidates, scores, progress)
    if level == "nodes":
        keep = torch.ones(g.n_writers, dtype=torch.bool)
        current = float(s.evaluate(node_removed(s, keep)[None], copies=copies)[0])
        for layer in reversed(range(g.n_layers)):
            ws = list(range(g.layer_writers(layer).start, g.layer_writers(layer).stop))
            trial = []
            for w in ws:
                k2 = keep.clone()
                k2[w] = False
                trial.append(node_removed(s, k2))
            vals = s.evaluate(torch.stack(trial), copies=copies)
            effect = (current - vals).abs() / abs(gap)
            for w, e in zip(ws, effect, strict=True):
                scores[w] = torch.where(s.valid[w], e, torch.tensor(float("nan")))
                if e < threshold:
                    keep[w] = False
            current = float(s.evaluate(node_removed(s, keep)[None], copies=copies)[0])
            if progress:
                progress(f"layer {layer}: {int(keep[ws].sum())}/{len(ws)} kept, metric {s.normalize(current):.3f}")
        return Circuit(g, prune_dead_readers(g, s.valid & keep[:, None]), scores, f"acdc-nodes(t={threshold},{s.ablation})",
                       faithfulness=float(s.normalize(current)))  # fmt: skip
    if level != "edges":
        raise ValueError(f"level must be 'nodes' or 'edges', got {level!r}")
    kept = s.valid.clone() if candidates is None else s.valid & candidates.bool()
    current = float(s.evaluate((s.valid & ~kept)[None], copies=copies)[0])
    for r in reversed(range(g.n_readers)):
        if not _reader_alive(g, kept, r):
            kept[:, r] = False
            continue
        ws = kept[:, r].nonzero().flatten().tolist()
        if not ws:
            continue
        trial = []
        for w in ws:
            k2 = kept.clone()
            k2[w, r] = False
            trial.append(s.valid & ~k2)
        vals = s.evaluate(torch.stack(trial), copies=copies)
        effect = (current - vals).abs() / abs(gap)
        for w, e in zip(ws, effect, strict=True):
            scores[w, r] = e
            if e < threshold:
                kept[w, r] = False
        current = float(s.evaluate((s.valid & ~kept)[None], copies=copies)[0])
        if progress:
            progress(f"{g.readers[r]}: {int(kept[:, r].sum())}/{len(ws)} edges kept, metric {s.normalize(current):.3f}")
    return Circuit(g, kept, scores, f"acdc-edges(t={threshold},{s.ablation})", faithfulness=float(s.normalize(current)))


def _acdc_sequential(s: Setup, level: str, threshold: float, candidates: Tensor | None, scores: Tensor,
                     progress: Callable[[str], None] | None) -> Circuit:  # fmt: skip
    """ACDC one candidate at a time (Conmy et al. 2023, Algorithm 1) on the normalised metric's absolute change."""
    g = s.graph
    gap = s.clean - s.empty
    if level == "nodes":
        keep = torch.ones(g.n_writers, dtype=torch.bool)
        current = float(s.evaluate(node_removed(s, keep)[None])[0])
        for layer in reversed(range(g.n_layers)):
            for w in range(g.layer_writers(layer).start, g.layer_writers(layer).stop):
                if not bool(s.valid[w].any()):
                    continue
                k2 = keep.clone()
                k2[w] = False
                val = float(s.evaluate(node_removed(s, k2)[None])[0])
                change = abs(current - val) / abs(gap)
                scores[w] = torch.where(s.valid[w], torch.tensor(change), torch.tensor(float("nan")))
                if change < threshold:
                    keep, current = k2, val
            if progress:
                ws = g.layer_writers(layer)
                progress(f"layer {layer}: {int(keep[ws].sum())}/{ws.stop - ws.start} kept, metric {s.normalize(current):.3f}")
        kept = prune_dead_readers(g, s.valid & keep[:, None])
        return Circuit(g, kept, scores, f"acdc-nodes-sequential(t={threshold},{s.ablation})",
                       faithfulness=float(s.normalize(current)))  # fmt: skip
    if level != "edges":
        raise ValueError(f"level must be 'nodes' or 'edges', got {level!r}")
    kept = s.valid.clone() if candidates is None else s.valid & candidates.bool()
    current = float(s.evaluate((s.valid & ~kept)[None])[0])
    for r in reversed(range(g.n_readers)):
        if not _reader_alive(g, kept, r):
            kept[:, r] = False
            continue
        ws = kept[:, r].nonzero().flatten().tolist()
        for w in ws:
            k2 = kept.clone()
            k2[w, r] = False
            val = float(s.evaluate((s.valid & ~k2)[None])[0])
            scores[w, r] = change = abs(current - val) / abs(gap)
            if change < threshold:
                kept, current = k2, val
        if progress and ws:
            progress(f"{g.readers[r]}: {int(kept[:, r].sum())}/{len(ws)} edges kept, metric {s.normalize(current):.3f}")
    return Circuit(g, kept, scores, f"acdc-edges-sequential(t={threshold},{s.ablation})",
                   faithfulness=float(s.normalize(current)))  # fmt: skip


def prune_dead_readers(g: ComponentGraph, kept: Tensor) -> Tensor:
    """Drop edges into readers whose component(s) are not in the circuit (their input is never used)."""
    kept = kept.clone()
    for r in range(g.n_readers):
        if not _reader_alive(g, kept, r):
            kept[:, r] = False
    return kept


def _reader_alive(g: ComponentGraph, kept: Tensor, r: int) -> bool:
    """A reader matters only while the component(s) it feeds still have a kept outgoing edge."""
    if r == g.logits_reader:
        return True
    layer, is_mlp = divmod(r, 2)
    if is_mlp:
        return bool(kept[g.writer_index(layer, None)].any())
    ws = g.layer_writers(layer)
    return bool(kept[ws.start : ws.stop - 1].any())


def learned_mask(
    model: Model,
    task: TaskPairs,
    *,
    level: Literal["nodes", "edges"] = "nodes",
    ablation: Ablation = "mean",
    sparsity: float = 0.05,
    steps: int = 60,
    lr: float = 0.1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    prepared: Setup | None = None,
) -> Circuit:
    """Train a sigmoid keep-mask with loss (1 - normalised metric)^2 + sparsity * mean(mask).

    Nodes: one logit per head / MLP (embedding always kept); edges: one per valid edge. The final
    circuit keeps mask > 0.5 and its faithfulness is measured with the hard mask.
    """
    s = prepared or setup(model, task, ablation=ablation, seed=seed)
    g = s.graph
    torch.manual_seed(seed)
    shape = (g.n_writers,) if level == "nodes" else (g.n_writers, g.n_readers)
    theta = torch.full(shape, 3.0, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    valid = s.valid.float()
    for step in range(steps):
        keep = torch.sigmoid(theta)
        if level == "nodes":
            keep = torch.cat([torch.ones(1), keep[1:]])
            removed = valid * (1 - keep)[:, None]
            density = keep[1:].mean()
        else:
            removed = valid * (1 - keep)
            density = (keep * valid).sum() / valid.sum()
        with edge_edits(s.model, g, removed=removed[None], ablated=s.ablated):
            m = s.task.metric(s.model(s.batch, grad=True)).mean()
        loss = (1 - (m - s.empty) / (s.clean - s.empty)) ** 2 + sparsity * density
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress and (step % 10 == 0 or step == steps - 1):
            progress(f"step {step}: loss {float(loss.detach()):.4f}, metric {float(s.normalize(m.detach())):.3f}, "
                     f"density {float(density.detach()):.3f}")
    final = torch.sigmoid(theta.detach())
    if level == "nodes":
        keep_w = final > 0.5
        kept = prune_dead_readers(g, s.valid & node_removed(s, keep_w).logical_not())
        scores = final[:, None].expand(-1, g.n_readers).clone()
    else:
        kept = s.valid & (final > 0.5)
        scores = final.clone()
    scores = scores.masked_fill(~s.valid, float("nan"))
    faith = float(s.normalize(s.evaluate((s.valid & ~kept)[None])[0]))
    return Circuit(g, kept, scores, f"learned-mask-{level}(l1={sparsity},{s.ablation})", faithfulness=faith)


@dataclass
class FaithfulnessCurve:
    """Metric recovered when only the top-k edges (or nodes) of a ranking are kept."""

    kept: list[int]
    """Number of edges (or nodes) kept at each point."""
    faithfulness: Tensor
    """(point,) (m - empty) / (clean - empty)."""
    level: str


def faithfulness_curve(
    s: Setup, ranking: Tensor, points: Sequence[int], *, level: Literal["nodes", "edges"] = "edges"
) -> FaithfulnessCurve:
    """Keep the top-``k`` entries of ``ranking`` ((writer, reader) or (writer,) scores) for each k."""
    flat = ranking.nan_to_num(float("-inf")).flatten()
    if level == "nodes":
        flat = flat.clone()
        flat[0] = float("-inf")  # the embedding is always kept
    order = flat.argsort(descending=True)
    masks = []
    for k in points:
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[order[:k]] = True
        if level == "nodes":
            masks.append(node_removed(s, keep))
        else:
            masks.append(s.valid & ~keep.reshape(s.valid.shape))
    vals = s.evaluate(torch.stack(masks))
    return FaithfulnessCurve(list(points), s.normalize(vals), level)  # type: ignore[arg-type]
