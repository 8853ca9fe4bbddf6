"""Circuit pruning: the smallest set of nodes that still does the task, with everything else mean-ablated.

Gao et al. (2025) find a task's circuit in a weight-sparse model by learning a mask over *nodes*
(neurons, attention channels, residual channels) that minimises the number of kept nodes subject to
the task loss staying low; removed nodes are replaced by their mean activation over the task
(mean ablation). Circuit size at equal task loss is then compared between the sparse model and a dense
one: the paper's claim is that sparse models give much smaller circuits.

The engine here is generic (:func:`learn_scores` + :func:`smallest_circuit` take loss functions of a
keep-mask, so they are tested on a planted toy). :func:`prune_model` applies it to a core Model: nodes
are every MLP neuron (``mlp_post``) and every attention value channel (``attn_z``, head x d_head) of
every layer; a node's kept value is ``m * x + (1 - m) * mean``. Scores are learned with a sigmoid
relaxation (logistic noise while training, a penalty on the expected number of kept nodes); the
circuit is then the top-n nodes by score with the smallest n whose *hard* mask keeps the task loss
under the threshold (binary search; the loss is assumed monotone in n). Necessity = mean-ablate only
the circuit; sufficiency = mean-ablate everything but the circuit.

    >>> import torch
    >>> from lmscope.sparse.prune import PruneConfig, learn_scores, smallest_circuit
    >>> x = torch.randn(256, 16); y = x[:, [2, 5]].sum(1)
    >>> loss = lambda keep: ((keep * x + (1 - keep) * x.mean(0))[:, [2, 5]].sum(1) - y).pow(2).mean()
    >>> scores = learn_scores(16, loss, PruneConfig(steps=200))
    >>> sorted(smallest_circuit(scores, lambda k: float(loss(k.float())), 0.05).nonzero().flatten().tolist())
    [2, 5]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.inputs import Batch
from lmscope.core.model import Model
from lmscope.core.sites import Site, SiteLike


@dataclass
class PruneConfig:
    """Learning the node scores."""

    steps: int = 600
    """Adam steps on the mask logits."""
    lr: float = 0.1
    """Adam learning rate."""
    penalty: float = 0.3
    """Weight of the mean keep-probability (the relaxed fraction of kept nodes) in the objective."""
    init: float = 3.0
    """Initial mask logit (sigmoid(3) = 0.95: start from the full model)."""
    seed: int = 0
    """Seed of the logistic noise."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.penalty < 0:
            raise ValueError(f"need steps >= 1, lr > 0, penalty >= 0; got {self.steps}, {self.lr}, {self.penalty}")


def learn_scores(n_nodes: int, loss_fn: Callable[[Tensor], Tensor], cfg: PruneConfig) -> Tensor:
    """Mask logits (n_nodes,) minimising ``loss_fn(keep) + penalty * mean(keep)``; higher = more needed."""
    logits = torch.full((n_nodes,), cfg.init, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps):
        u = torch.rand(n_nodes, generator=gen).clamp(1e-6, 1 - 1e-6)
        keep = torch.sigmoid(logits + torch.log(u) - torch.log1p(-u))  # logistic noise: a binary-concrete relaxation
        loss = loss_fn(keep) + cfg.penalty * torch.sigmoid(logits).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logits.detach()


def smallest_circuit(scores: Tensor, eval_loss: Callable[[Tensor], float], threshold: float) -> Tensor:
    """Boolean keep-mask of the top-n nodes by ``scores`` with the smallest n whose loss is <= ``threshold``.

    Raises ValueError when even the full set of nodes is above the threshold.
    """
    order = scores.argsort(descending=True)

    def mask(n: int) -> Tensor:
        m = torch.zeros(len(scores), dtype=torch.bool)
        m[order[:n]] = True
        return m

    if eval_loss(mask(len(scores))) > threshold:
        raise ValueError(f"the full model's task loss is above the threshold {threshold}; raise the threshold")
    lo, hi = 0, len(scores)  # invariant: loss(hi) <= threshold
    while lo < hi:
        mid = (lo + hi) // 2
        if eval_loss(mask(mid)) <= threshold:
            hi = mid
        else:
            lo = mid + 1
    return mask(hi)


@dataclass
class NodeSpace:
    """The prunable nodes of a model: one block of channels per site, flattened into one index space."""

    sites: list[Site]
    widths: list[int]
    means: list[Tensor]
    """Mean activation of each site over the task's real tokens (what an ablated node is replaced by)."""

    @property
    def n_nodes(self) -> int:
        return sum(self.widths)

    def split(self, keep: Tensor) -> list[Tensor]:
        return list(keep.split(self.widths))

    def edits(self, keep: Tensor) -> dict[SiteLike, edits.Edit | Sequence[edits.Edit]]:
        """Mean-ablation edits applying ``keep`` (n_nodes,) in [0, 1] (float for learning, bool for evaluation)."""
        plan: dict[SiteLike, edits.Edit | Sequence[edits.Edit]] = {}
        for site, k, mean in zip(self.sites, self.split(keep), self.means, strict=False):

            def fn(x: Tensor, k: Tensor = k.to(torch.float32), mean: Tensor = mean) -> Tensor:
                flat = x.reshape(*x.shape[:2], -1)  # attn_z arrives as (batch, seq, head, d_head)
                return (k * flat + (1 - k) * mean).reshape(x.shape)

            plan[site] = edits.custom(fn)
        return plan


def node_space(model: Model, batch: Batch, kinds: tuple[str, ...] = ("mlp_post", "attn_z")) -> NodeSpace:
    """Nodes of ``kinds`` at every layer with their task means (run this inside any activation-sparsity context)."""
    sites = [Site(kind, layer) for layer in range(model.shape.n_layers) for kind in kinds]
    with capture(model, sites) as acts:
        model(batch)
    mask = batch.attention_mask.bool()
    means = [acts[s].reshape(*acts[s].shape[:2], -1)[mask].mean(0) for s in sites]
    return NodeSpace(sites, [int(m.numel()) for m in means], means)


@dataclass
class PruneResult:
    """A circuit and its tests, all on the same task prompts."""

    n_nodes: int
    """Nodes in the model (MLP neurons + attention value channels)."""
    circuit_nodes: int
    """Nodes kept in the circuit."""
    per_site: dict[str, int]
    """Circuit nodes per site."""
    circuit_weights: int
    """Nonzero weights touching a circuit node (c_fc column + c_proj row of a neuron; v column + o row of a channel)."""
    total_weights: int
    """Nonzero weights in the same matrices, whole model."""
    loss_full: float
    acc_full: float
    loss_sufficient: float
    """Task loss keeping only the circuit (all other nodes mean-ablated)."""
    acc_sufficient: float
    loss_necessary: float
    """Task loss with only the circuit mean-ablated."""
    acc_necessary: float
    loss_all_ablated: float
    """Task loss with every node mean-ablated (the floor)."""
    keep: Tensor
    """Boolean keep-mask over the node space."""


def prune_model(model: Model, batch: Batch, loss_fn: Callable[[Tensor], tuple[Tensor, Tensor]], threshold: float,
                cfg: PruneConfig, kinds: tuple[str, ...] = ("mlp_post", "attn_z")) -> PruneResult:  # fmt: skip
    """Find the smallest circuit keeping ``loss_fn(logits)[0] <= threshold``; ``loss_fn`` returns (loss, accuracy).

    Run it inside :func:`lmscope.sparse.model.activation_sparsity` for a model trained with it.
    """
    space = node_space(model, batch, kinds)

    def run(keep: Tensor, grad: bool) -> tuple[Tensor, Tensor]:
        with intervene(model, space.edits(keep)):
            logits = model(batch, grad=grad)
        assert logits is not None
        return loss_fn(logits)

    scores = learn_scores(space.n_nodes, lambda keep: run(keep, True)[0], cfg)
    keep = smallest_circuit(scores, lambda k: float(run(k, False)[0]), threshold)
    full, suff, nec, none = (run(k, False) for k in (torch.ones_like(keep), keep, ~keep, torch.zeros_like(keep)))
    per_site = {str(s): int(k.sum()) for s, k in zip(space.sites, space.split(keep), strict=False)}
    cw, tw = _circuit_weights(model, space, keep)
    return PruneResult(space.n_nodes, int(keep.sum()), per_site, cw, tw, float(full[0]), float(full[1]), float(suff[0]),
                       float(suff[1]), float(nec[0]), float(nec[1]), float(none[0]), keep)  # fmt: skip


def _circuit_weights(model: Model, space: NodeSpace, keep: Tensor) -> tuple[int, int]:
    """Nonzero weights attached to kept nodes, and in the same matrices overall (GPT-2 Conv1D layout: (in, out))."""
    kept = total = 0
    d = model.shape.d_model
    for site, k in zip(space.sites, space.split(keep), strict=False):
        block = model.hf.transformer.h[site.layer]
        if site.kind == "mlp_post":
            w_in, w_out = block.mlp.c_fc.weight, block.mlp.c_proj.weight  # (d_model, d_mlp), (d_mlp, d_model)
        elif site.kind == "attn_z":
            w_in, w_out = block.attn.c_attn.weight[:, 2 * d:], block.attn.c_proj.weight  # value columns, o rows
        else:
            continue
        nz_in, nz_out = (w_in != 0).sum(0), (w_out != 0).sum(1)  # per node
        kept += int(nz_in[k].sum() + nz_out[k].sum())
        total += int(nz_in.sum() + nz_out.sum())
    return kept, total
