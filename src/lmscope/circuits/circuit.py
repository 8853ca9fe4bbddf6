"""A discovered circuit: kept edges of the component graph, their scores, saving and drawing.

Saved as two files side by side: ``<name>.safetensors`` (the kept mask and the scores, with
provenance, through :func:`lmscope.experiments.artifacts.save_artifact`) and ``<name>.json`` (the same
circuit as readable lists of nodes and edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.experiments.artifacts import Provenance, atomic_write_json, load_artifact, save_artifact

from .graph import ComponentGraph


@dataclass
class Circuit:
    """Kept edges of a :class:`ComponentGraph` with a score per edge."""

    graph: ComponentGraph
    kept: Tensor
    """(writer, reader) bool: edges in the circuit."""
    scores: Tensor
    """(writer, reader) float score the method gave each edge (NaN where not scored)."""
    method: str
    """How it was found."""
    faithfulness: float = float("nan")
    """Normalised metric of the circuit alone, as measured by the method."""

    @property
    def nodes(self) -> list[str]:
        """Heads and MLPs with at least one kept outgoing edge (the embedding is not counted)."""
        w = self.kept.any(1)
        return [self.graph.writers[i] for i in range(1, self.graph.n_writers) if w[i]]

    @property
    def node_mask(self) -> Tensor:
        """(writer,) bool kept heads/MLPs (index 0, the embedding, is False)."""
        m = self.kept.any(1).clone()
        m[0] = False
        return m

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(self.graph.writers[w], self.graph.readers[r]) for w, r in self.kept.nonzero().tolist()]

    def summary(self) -> dict[str, Any]:
        """Sizes as counts and as fractions of the whole graph."""
        g = self.graph
        n_heads = sum(1 for n in self.nodes if n.startswith("a"))
        n_mlps = sum(1 for n in self.nodes if n.startswith("mlp"))
        total_edges = int(g.valid().sum())
        return {
            "method": self.method,
            "heads": n_heads, "heads_fraction": n_heads / (g.n_layers * g.n_heads),
            "mlps": n_mlps, "mlps_fraction": n_mlps / g.n_layers,
            "edges": int(self.kept.sum()), "edges_total": total_edges, "edges_fraction": int(self.kept.sum()) / total_edges,
            "faithfulness": None if math.isnan(self.faithfulness) else self.faithfulness,
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        sc = self.scores
        return {
            **self.summary(),
            "n_layers": self.graph.n_layers, "n_heads": self.graph.n_heads,
            "nodes": self.nodes,
            "edges_list": [
                {"from": self.graph.writers[w], "to": self.graph.readers[r],
                 "score": None if math.isnan(float(sc[w, r])) else float(sc[w, r])}
                for w, r in self.kept.nonzero().tolist()
            ],
        }  # fmt: skip

    def save(self, path: str | Path, *, provenance: Provenance | None = None) -> Path:
        """Write ``path`` (.safetensors) and the readable ``path`` with a .json suffix."""
        p = Path(path)
        save_artifact(
            p, "circuit", {"kept": self.kept.to(torch.uint8), "scores": self.scores.nan_to_num(-1.0)},
            meta={"n_layers": self.graph.n_layers, "n_heads": self.graph.n_heads, "method": self.method,
                  "faithfulness": None if math.isnan(self.faithfulness) else self.faithfulness,
                  "scored": self.scores.isnan().logical_not().tolist() if self.scores.numel() < 50000 else None},
            provenance=provenance,
        )  # fmt: skip
        atomic_write_json(p.with_suffix(".json"), self.to_json())
        return p

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        art = load_artifact(path, "circuit")
        g = ComponentGraph(int(art.meta["n_layers"]), int(art.meta["n_heads"]))
        scores = art.tensors["scores"].clone()
        if art.meta.get("scored") is not None:
            scores[~torch.tensor(art.meta["scored"], dtype=torch.bool)] = float("nan")
        faith = art.meta.get("faithfulness")
        return cls(g, art.tensors["kept"].bool(), scores, art.meta["method"], float("nan") if faith is None else faith)

    def draw(self, *, title: str | None = None):
        """Layer on the x axis, head on the y axis (MLPs on top); kept edges as lines. Returns the figure."""
        from lmscope.experiments.report import new_figure

        g = self.graph
        fig, ax = new_figure(figsize=(max(6.0, 0.35 * g.n_layers + 3), 5))

        def wpos(w: int) -> tuple[float, float]:
            if w == 0:
                return (-1.0, g.n_heads / 2)
            layer, h = divmod(w - 1, g.n_heads + 1)
            return (layer + 0.3, h if h < g.n_heads else g.n_heads + 0.8)

        def rpos(r: int) -> tuple[float, float]:
            if r == g.logits_reader:
                return (g.n_layers, g.n_heads / 2)
            layer, is_mlp = divmod(r, 2)
            return (layer, g.n_heads + 0.8) if is_mlp else (layer, -1.0)

        sc = self.scores.nan_to_num(0.0).abs()
        top = float(sc[self.kept].max()) if bool(self.kept.any()) else 1.0
        for w, r in self.kept.nonzero().tolist():
            (x0, y0), (x1, y1) = wpos(w), rpos(r)
            lw = 0.3 + 2.5 * float(sc[w, r]) / (top or 1.0)
            ax.plot([x0, x1], [y0, y1], color="tab:blue", alpha=0.35, lw=lw)
        for name in self.nodes:
            w = self.graph.writers.index(name)
            x, y = wpos(w)
            ax.scatter([x], [y], color="tab:red" if name.startswith("a") else "tab:green", s=30, zorder=3)
            ax.annotate(name, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.scatter([-1, g.n_layers], [g.n_heads / 2] * 2, color="black", marker="s", zorder=3)
        ax.set_xlabel("layer (embedding left, logits right)")
        ax.set_ylabel("head (bottom row: attention inputs; top row: MLPs)")
        ax.set_title(title or f"{self.method}: {len(self.nodes)} nodes, {int(self.kept.sum())} edges")
        return fig
