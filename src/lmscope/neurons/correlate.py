"""Step 1 of the single-neuron workflow: which neurons correlate with a behaviour or token property?

For every neuron (``mlp_post`` of the chosen layers) and a binary label per token (e.g. "this
token is inside a string literal"), compute on a *train* split

- the **point-biserial correlation** r (Pearson's r between the activation and the 0/1 label),
- the **AUROC** of the activation as a score for the label (Mann-Whitney U / (n1 n0));

rank neurons by |AUROC - 0.5|, and report the candidates' AUROC on a *held-out* split (other
files), which guards against neurons that fit the train tokens by chance. Correlation is not
causation: the ablation and dose-response steps (``ablate.py``) test the candidates.

    >>> import torch
    >>> from lmscope.neurons.correlate import auroc, point_biserial
    >>> x = torch.tensor([[0.1], [0.2], [0.9], [0.8]]); y = torch.tensor([0, 0, 1, 1]).bool()
    >>> float(auroc(x, y)[0]), round(float(point_biserial(x, y)[0]), 3)
    (1.0, 0.99)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.core.hooks import capture
from lmscope.core.sites import Site

if TYPE_CHECKING:
    from lmscope.core.model import Model


def point_biserial(acts: Tensor, labels: Tensor) -> Tensor:
    """(neurons,) Pearson correlation of each column of ``acts`` (tokens, neurons) with a 0/1 ``labels`` (tokens,)."""
    x = acts.double()
    y = labels.double()[:, None]
    xc, yc = x - x.mean(0), y - y.mean(0)
    den = (xc.pow(2).sum(0) * yc.pow(2).sum(0)).sqrt()
    return ((xc * yc).sum(0) / den.clamp(min=1e-30)).float()


def auroc(acts: Tensor, labels: Tensor) -> Tensor:
    """(neurons,) area under the ROC curve of each column as a score for ``labels`` (ties get average ranks)."""
    n1 = int(labels.sum())
    n0 = labels.numel() - n1
    if n1 == 0 or n0 == 0:
        raise ValueError(f"AUROC needs both classes; got {n1} positive and {n0} negative tokens")
    x = acts.double()
    n, c = x.shape
    sorted_x, order = x.sort(0)
    new = torch.ones_like(sorted_x, dtype=torch.bool)
    new[1:] = sorted_x[1:] != sorted_x[:-1]
    # Tied values share the average of their ranks: group ids per column, offset so columns never mix.
    gid = (new.cumsum(0) - 1) + torch.arange(c)[None, :] * n
    base = torch.arange(1, n + 1, dtype=torch.float64)[:, None].expand(n, c)
    sums = torch.zeros(n * c, dtype=torch.float64).index_add_(0, gid.flatten(), base.flatten())
    counts = torch.zeros(n * c, dtype=torch.float64).index_add_(0, gid.flatten(), torch.ones(n * c, dtype=torch.float64))
    ranks = torch.empty_like(x).scatter_(0, order, (sums / counts.clamp(min=1))[gid])
    u = ranks[labels.bool()].sum(0) - n1 * (n1 + 1) / 2
    return (u / (n1 * n0)).float()


@torch.no_grad()
def record_neurons(model: Model, layers: list[int], ids: Tensor, *, batch_size: int = 8, kind: str = "mlp_post",
                   dtype: torch.dtype = torch.float16, progress: Callable[[str], None] | None = None) -> Tensor:
    """(tokens, len(layers) * width) activations of ``kind`` at ``layers`` for windows ``ids`` (n, seq), row-major."""
    sites = [Site(kind, layer) for layer in layers]
    rows = []
    for i in range(0, ids.shape[0], batch_size):
        if progress:
            progress(f"recording {kind} at layers {layers}: window {i + 1}/{ids.shape[0]}")
        with capture(model, sites, stop_early=True, device="cpu") as acts:
            model(ids[i : i + batch_size])
        a = torch.cat([acts[s] for s in sites], dim=-1)
        rows.append(a.reshape(-1, a.shape[-1]).to(dtype))
    return torch.cat(rows)


@dataclass
class Candidate:
    """A neuron ranked by its train AUROC, with its held-out scores."""

    layer: int
    neuron: int
    train_auroc: float
    train_r: float
    heldout_auroc: float
    heldout_r: float


@dataclass
class CorrelationResult:
    """Every neuron's correlation with the label and the best candidates checked on held-out data."""

    layers: list[int]
    width: int
    """Neurons per layer."""
    train_auroc: Tensor
    """(len(layers) * width,) AUROC on the train split."""
    train_r: Tensor
    """(len(layers) * width,) point-biserial r on the train split."""
    candidates: list[Candidate] = field(default_factory=list)
    """Top neurons by |train AUROC - 0.5|, with held-out AUROC and r."""
    n_train: int = 0
    n_heldout: int = 0
    positive_rate: float = 0.0
    """Fraction of train tokens with label 1."""


def correlate(model: Model, layers: list[int], train_ids: Tensor, train_labels: Tensor, heldout_ids: Tensor,
              heldout_labels: Tensor, *, top: int = 10, skip_first: int = 1, batch_size: int = 8,
              kind: str = "mlp_post", progress: Callable[[str], None] | None = None) -> CorrelationResult:  # fmt: skip
    """Rank neurons of ``layers`` by train AUROC against labels; score the top ``top`` on held-out windows."""
    width = model.site_width(Site(kind, layers[0]))

    def data(ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        acts = record_neurons(model, layers, ids, batch_size=batch_size, kind=kind, progress=progress)
        acts = acts.reshape(ids.shape[0], ids.shape[1], -1)[:, skip_first:].reshape(-1, acts.shape[-1])
        return acts, labels[:, skip_first:].reshape(-1)

    xa, ya = data(train_ids, train_labels)
    # Column blocks of one layer keep the rank computation's memory at a few copies of one layer.
    blocks = [(c, min(c + 512, xa.shape[1])) for c in range(0, xa.shape[1], 512)]
    tr_auc = torch.cat([auroc(xa[:, a:b], ya) for a, b in blocks])
    tr_r = torch.cat([point_biserial(xa[:, a:b], ya) for a, b in blocks])
    del xa
    order = (tr_auc - 0.5).abs().argsort(descending=True)[:top]
    xb, yb = data(heldout_ids, heldout_labels)
    ho_auc, ho_r = auroc(xb[:, order], yb), point_biserial(xb[:, order], yb)
    cands = [
        Candidate(layers[int(i) // width], int(i) % width, float(tr_auc[i]), float(tr_r[i]), float(ho_auc[j]), float(ho_r[j]))
        for j, i in enumerate(order)
    ]
    return CorrelationResult(list(layers), width, tr_auc, tr_r, cands, int(ya.numel()), int(yb.numel()), float(ya.float().mean()))
