"""Necessity and sufficiency of a circuit under ablation, against random circuits of the same size.

Gao et al. 2025 (weight-sparse transformers) and the IOI work check a circuit two ways:
- **necessity**: ablate the circuit, keep everything else. If the circuit is what does the task,
  the metric collapses (fraction of the clean metric near the fully-ablated value).
- **sufficiency**: ablate everything *outside* the circuit. If the circuit is enough, the metric
  stays near its clean value (fraction near 1).
Both are reported as fractions of the clean metric (``m / m_clean``), next to the same numbers for
random circuits with as many heads and MLPs (node circuits) or as many edges (edge circuits), so
"necessary" and "sufficient" are judged against what any circuit of that size does.

    from lmscope.circuits import necessity_sufficiency
    ns = necessity_sufficiency(model, task, circuit, ablation="mean", n_random=10)
    ns.necessity, ns.sufficiency, ns.random_necessity.mean()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .discovery import Ablation, Setup, node_removed, setup

if TYPE_CHECKING:
    from lmscope.core.model import Model

    from .circuit import Circuit
    from .tasks import TaskPairs


@dataclass
class NecessitySufficiency:
    """Fractions of the clean metric after ablating the circuit / its complement."""

    necessity: float
    """m(circuit ablated) / m_clean: low means the circuit is necessary."""
    sufficiency: float
    """m(everything else ablated) / m_clean: near 1 means the circuit is sufficient."""
    random_necessity: Tensor
    """(n_random,) the same for random circuits of the same size."""
    random_sufficiency: Tensor
    clean: float
    """Mean metric of the full model."""
    ablated_all: float
    """Mean metric with everything ablated, as a fraction of clean."""
    level: str
    """"nodes" (heads + MLPs) or "edges"."""

    def to_json(self) -> dict[str, Any]:
        return {
            "necessity": self.necessity, "sufficiency": self.sufficiency,
            "random_necessity_mean": float(self.random_necessity.mean()),
            "random_necessity_std": float(self.random_necessity.std()) if len(self.random_necessity) > 1 else 0.0,
            "random_sufficiency_mean": float(self.random_sufficiency.mean()),
            "random_sufficiency_std": float(self.random_sufficiency.std()) if len(self.random_sufficiency) > 1 else 0.0,
            "clean_metric": self.clean, "ablated_all_fraction": self.ablated_all, "level": self.level,
            "n_random": len(self.random_necessity),
        }  # fmt: skip


def _random_nodes(s: Setup, mask: Tensor, gen: torch.Generator) -> Tensor:
    g = s.graph
    out = torch.zeros_like(mask)
    heads = torch.tensor([i for i in range(1, g.n_writers) if g.writers[i].startswith("a")])
    mlps = torch.tensor([i for i in range(1, g.n_writers) if g.writers[i].startswith("mlp")])
    for pool in (heads, mlps):
        k = int(mask[pool].sum())
        out[pool[torch.randperm(len(pool), generator=gen)[:k]]] = True
    return out


def necessity_sufficiency(
    model: Model,
    task: TaskPairs,
    circuit: Circuit,
    *,
    level: str = "nodes",
    ablation: Ablation = "mean",
    n_random: int = 10,
    seed: int = 0,
    prepared: Setup | None = None,
) -> NecessitySufficiency:
    """Ablate the circuit and its complement (and those of ``n_random`` random circuits)."""
    s = prepared or setup(model, task, ablation=ablation, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    masks = []
    if level == "nodes":
        nodes = circuit.node_mask
        sets = [nodes] + [_random_nodes(s, nodes, gen) for _ in range(n_random)]
        for m in sets:
            keep_all_but = ~m
            masks.append(node_removed(s, keep_all_but))  # necessity: ablate the circuit's nodes
            masks.append(node_removed(s, m))  # sufficiency: keep only the circuit's nodes
    elif level == "edges":
        edges = circuit.kept & s.valid
        k = int(edges.sum())
        idx = s.valid.flatten().nonzero().flatten()
        sets = [edges]
        for _ in range(n_random):
            r = torch.zeros(s.valid.numel(), dtype=torch.bool)
            r[idx[torch.randperm(len(idx), generator=gen)[:k]]] = True
            sets.append(r.reshape(s.valid.shape))
        for m in sets:
            masks.append(m)
            masks.append(s.valid & ~m)
    else:
        raise ValueError(f"level must be 'nodes' or 'edges', got {level!r}")
    vals = s.evaluate(torch.stack(masks)) / s.clean
    nec, suf = vals[0::2], vals[1::2]
    return NecessitySufficiency(float(nec[0]), float(suf[0]), nec[1:], suf[1:], s.clean, s.empty / s.clean, level)
