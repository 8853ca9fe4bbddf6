"""Attribution patching: a first-order (gradient) estimate of every activation patch at once.

Activation patching needs one forward per patch. Attribution patching (Nanda 2023; Kramár et al.
2024 "AtP*") linearises the metric around the corrupted run: patching activation a from a_corrupt
to a_clean changes the metric by about ``(a_clean - a_corrupt) . dM/da``, with the gradient from
ONE backward pass on the corrupted run. The same :class:`~.patching.PatchSpec` lists are scored,
so attribution grids line up with activation-patching grids and can be correlated.

Edge attribution patching (Syed et al. 2023, "EAP") scores every edge of the component graph
(see :mod:`.graph`) as ``(out_u(clean) - out_u(corrupt)) . dM/d(input of v)``: the upstream
writer's output difference times the downstream reader's input gradient. Reader gradients come
from zero deltas with ``requires_grad`` injected at each reader's input, so they are the
gradients along that reader's path only. :func:`edge_patch_exact` computes the exact effect of
patching single edges (K per forward) to check the estimate.

Assumption: the metric is smooth near the corrupted run. It is exact when the metric is linear
in the patched activation (the tests check that on a toy); attention saturation and large
patches (e.g. the embedding) break it.

    from lmscope.circuits import attribution
    attr = attribution.node_attribution(model, clean, corrupt, specs, task.metric)
    eap = attribution.edge_attribution(model, task)            # (writer, reader) scores
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.sites import Site

from .graph import ComponentGraph, edge_edits, repeat_batch, writer_outputs
from .patching import Metric, PatchResult, PatchSpec

if TYPE_CHECKING:
    from lmscope.core.inputs import Batch
    from lmscope.core.model import Model

    from .tasks import TaskPairs


def node_attribution(
    model: Model, clean: Batch, corrupt: Batch, specs: Sequence[PatchSpec], metric: Metric, *, logits_to_keep: int = 0
) -> PatchResult:
    """Gradient estimate of denoising patches: ``values`` = corrupt + (clean - corrupt) . grad.

    Costs two forwards and one backward that computes activation gradients only (no weight
    gradients). ``logits_to_keep=1`` unembeds only the last position, for metrics that read nothing else.
    """
    specs = list(specs)
    sites = list(dict.fromkeys(s.site for s in specs))
    keep_kw = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
    with capture(model, sites) as clean_acts:
        m_clean = float(metric(model(clean, **keep_kw)).mean())
    # An identity edit puts a fresh tensor on the forward path at each site and keeps it, so its
    # gradient is dM/d(site) whatever view of the hooked module's tensor the site is.
    seen: dict[Site, Tensor] = {}

    def keep(x: Tensor, site: Site) -> Tensor:
        y = x * 1.0
        seen[site] = y
        return y

    with intervene(model, {site: edits.custom(partial(keep, site=site)) for site in sites}):
        out = metric(model(corrupt, grad=True, **keep_kw)).mean()
    # gradients of the kept activations only: the weights' gradients are never computed
    got = torch.autograd.grad(out, [seen[site] for site in sites], allow_unused=True)
    grads = dict(zip(sites, got, strict=True))
    m_corrupt = float(out.detach())
    vals = []
    for s in specs:
        idx = s.select(clean_acts[s.site])
        grad = grads[s.site]
        if grad is None:
            raise RuntimeError(f"no gradient reached {s.site}; does the metric depend on it?")
        d = (clean_acts[s.site][idx] - seen[s.site][idx].detach()) * grad[idx]
        vals.append(d.sum())
    est = torch.stack(vals).detach().cpu() + m_corrupt
    return PatchResult(specs, est, (est - m_corrupt) / (m_clean - m_corrupt), m_clean, m_corrupt, 0.0, 1)


@dataclass
class EdgeScores:
    """Scores for every (writer, reader) pair of the component graph (NaN where no edge exists)."""

    graph: ComponentGraph
    scores: Tensor
    """(writer, reader) estimated change of the mean metric when the edge is patched clean -> corrupt."""
    clean: float
    corrupt: float

    @property
    def normalized(self) -> Tensor:
        return self.scores / (self.clean - self.corrupt)

    def top(self, k: int) -> list[tuple[str, str, float]]:
        """The k edges with the largest |score| as (writer, reader, normalised score)."""
        s = self.normalized.nan_to_num(0.0).abs().flatten()
        idx = s.topk(min(k, s.numel())).indices
        nr = self.graph.n_readers
        return [(self.graph.writers[i // nr], self.graph.readers[i % nr], float(self.normalized.flatten()[i])) for i in idx]


def _reader_grads(model: Model, graph: ComponentGraph, batch: Batch, metric: Metric) -> tuple[Tensor, float]:
    """(n, seq, reader, d) gradient of the mean metric w.r.t. each reader's input."""
    n, seq = batch.shape
    zeros = {r: torch.zeros(n, seq, model.shape.d_model, device=model.device, requires_grad=True)
             for r in range(graph.n_readers)}  # fmt: skip
    with edge_edits(model, graph, const=zeros):
        out = metric(model(batch, grad=True)).mean()
    grads = torch.autograd.grad(out, [zeros[r] for r in range(graph.n_readers)], allow_unused=True)
    g = torch.stack([torch.zeros(n, seq, model.shape.d_model) if x is None else x.detach() for x in grads], dim=2)
    return g, float(out.detach())


def edge_attribution(model: Model, task: TaskPairs) -> EdgeScores:
    """EAP scores of all edges for a task (denoising: patching the clean edge into the corrupted run)."""
    graph = ComponentGraph.of(model)
    clean, corrupt = task.batches(model)
    delta = writer_outputs(model, clean) - writer_outputs(model, corrupt)  # (n, seq, writer, d)
    g, m_corrupt = _reader_grads(model, graph, corrupt, task.metric)  # (n, seq, reader, d): grad of the mean
    scores = torch.einsum("nswd,nsrd->wr", delta, g)
    scores = scores.masked_fill(~graph.valid(), float("nan"))
    m_clean = float(task.metric(model(clean)).mean())
    return EdgeScores(graph, scores, m_clean, m_corrupt)


@torch.no_grad()
def edge_patch_exact(
    model: Model, task: TaskPairs, edges: Sequence[tuple[int, int]], *, copies: int = 16
) -> Tensor:
    """Exact mean-metric change of patching each (writer, reader) edge alone, clean into corrupt.

    The writer's corrupted output is fixed (nothing upstream changes), so adding its clean-minus-
    corrupt difference to the reader's input is the exact single-edge patch.
    """
    graph = ComponentGraph.of(model)
    valid = graph.valid()
    for w, r in edges:
        if not valid[w, r]:
            raise ValueError(f"no edge from {graph.writers[w]} to {graph.readers[r]}")
    clean, corrupt = task.batches(model)
    n = clean.shape[0]
    delta = writer_outputs(model, clean) - writer_outputs(model, corrupt)
    base = float(task.metric(model(corrupt)).mean())
    out = []
    edges = list(edges)
    for lo in range(0, len(edges), copies):
        chunk = edges[lo : lo + copies]
        k = len(chunk)
        const: dict[int, Tensor] = {}
        for c, (w, r) in enumerate(chunk):
            if r not in const:
                const[r] = torch.zeros(k * n, *delta.shape[1:2], delta.shape[-1], device=model.device)
            const[r][c * n : (c + 1) * n] += delta[:, :, w]
        with edge_edits(model, graph, const=const):
            vals = task.metric(model(repeat_batch(corrupt, k))).reshape(k, n).mean(1)
        out.append(vals - base)
    return torch.cat(out).cpu()


def correlation(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two score vectors (NaNs dropped)."""
    a, b = a.flatten().double(), b.flatten().double()
    ok = ~(a.isnan() | b.isnan())
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")
