"""Sweeping steering over layers x scales, scoring behaviour and capability cost per cell.

A steering vector that "works" at one (layer, scale) may just break the model. Each cell of the
sweep is scored twice: the behaviour metric you pass (any ``fn(model) -> float`` that runs the
model, e.g. refusal rate of generated answers), and the capability cost of the same steering:
perplexity on neutral text (all positions steered) and the share of simple factual questions
still answered. The unsteered model is the baseline row. One engine; the CLI and the docs build
their behaviours from :mod:`lmscope.steering.behaviour`.

Cells are written to a JSON checkpoint as they finish; rerunning with the same checkpoint
resumes where it stopped (a cell is recomputed only if missing).

    >>> from lmscope.steering import sweep, behaviour as B
    >>> res = sweep(model, vec, lambda m: B.refusal_rate(m.generate(prompts, chat=True)), layers=[6, 10], scales=[2, 4])
    >>> res.best(goal=+1)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmscope.core.edits import Positions
from lmscope.core.model import Model
from lmscope.experiments import CellCheckpoint, identity
from lmscope.experiments.report import Result, new_figure
from lmscope.experiments.stats import compare_means, random_like
from lmscope.steering.behaviour import fact_accuracy, facts, neutral_texts, perplexity
from lmscope.steering.steer import steer
from lmscope.steering.vector import SteeringVector


@dataclass
class Cell:
    """One (layer, scale) of a sweep; the baseline has layer -1 and scale 0."""

    layer: int
    scale: float
    behaviour: float
    perplexity: float
    fact_acc: float
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    """Values of the sweep's ``extra`` metrics in this cell."""


@dataclass
class SweepResult:
    """All cells of a sweep with the unsteered baseline."""

    behaviour_name: str
    baseline: Cell
    cells: list[Cell]
    positions: str
    meta: dict[str, Any] = field(default_factory=dict)

    def best(self, goal: int = 1, *, max_ppl_ratio: float = 2.0) -> Cell | None:
        """The cell that moves behaviour most in direction ``goal`` (+1/-1) with perplexity at most
        ``max_ppl_ratio`` x baseline; None when no cell qualifies."""
        ok = [c for c in self.cells if c.perplexity <= max_ppl_ratio * self.baseline.perplexity]
        if not ok:
            return None
        return max(ok, key=lambda c: goal * (c.behaviour - self.baseline.behaviour))

    def rows(self) -> list[list[Any]]:
        """Table rows (see :meth:`header`): baseline first, then every cell."""
        b = self.baseline
        return [[c.layer, c.scale, round(c.behaviour, 4), round(c.behaviour - b.behaviour, 4), round(c.perplexity, 3),
                 round(c.perplexity / b.perplexity, 3), round(c.fact_acc, 3),
                 *(round(c.extra.get(k, float("nan")), 4) for k in sorted(b.extra))] for c in [b, *self.cells]]  # fmt: skip

    def header(self) -> list[str]:
        """Column names of :meth:`rows`: layer, scale, behaviour, change, perplexity, ppl_ratio, fact_acc, extras."""
        return ["layer", "scale", "behaviour", "change", "perplexity", "ppl_ratio", "fact_acc", *sorted(self.baseline.extra)]

    def heatmap(self):
        """Figure: behaviour change and perplexity ratio over layers x scales."""
        layers = sorted({c.layer for c in self.cells})
        scales = sorted({c.scale for c in self.cells})
        grid = {(c.layer, c.scale): c for c in self.cells}
        fig, axes = new_figure(1, 2, figsize=(10, 0.6 * len(layers) + 2))
        panels = [("behaviour change vs baseline", lambda c: c.behaviour - self.baseline.behaviour, "RdBu_r"),
                  ("perplexity / baseline", lambda c: c.perplexity / self.baseline.perplexity, "viridis")]  # fmt: skip
        for ax, (title, fn, cmap) in zip(axes, panels, strict=True):
            vals = [[fn(grid[(layer, s)]) if (layer, s) in grid else float("nan") for s in scales] for layer in layers]
            kw: dict[str, Any] = {"cmap": cmap, "aspect": "auto"}
            finite = [v for row in vals for v in row if v == v]
            if cmap == "RdBu_r":
                lim = max(1e-9, max(abs(v) for v in finite))
                kw.update(vmin=-lim, vmax=lim)
            elif finite and min(finite) > 0:  # perplexity ratios span orders of magnitude
                from matplotlib.colors import LogNorm

                kw["norm"] = LogNorm(vmin=min(min(finite), 1.0), vmax=max(max(finite), 1.0 + 1e-6))
            im = ax.imshow(vals, **kw)
            for i, row in enumerate(vals):
                for j, v in enumerate(row):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(scales)), [str(s) for s in scales])
            ax.set_yticks(range(len(layers)), [str(x) for x in layers])
            ax.set_xlabel("scale")
            ax.set_ylabel("layer")
            ax.set_title(f"{self.behaviour_name}: {title}" if "behaviour" in title else title)
            fig.colorbar(im, ax=ax)
        return fig

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepResult:
        """Rebuild a result from :meth:`to_dict` output (``result.json``)."""
        return cls(d["behaviour"], Cell(**d["baseline"]), [Cell(**c) for c in d["cells"]], d["positions"], d.get("meta", {}))

    def to_dict(self) -> dict[str, Any]:
        return {"behaviour": self.behaviour_name, "positions": self.positions, "baseline": asdict(self.baseline),
                "cells": [asdict(c) for c in self.cells], "meta": self.meta}  # fmt: skip

    def write(self, folder: str | Path, *, goal: int = 1) -> Path:
        """index.html + result.json + heatmap.png in ``folder``."""
        return self.report(goal=goal).write(folder)

    def report(self, *, goal: int = 1) -> Result:
        rep = Result(f"Steering sweep: {self.behaviour_name}")
        best = self.best(goal)
        rep.text("Best cell", "none within the perplexity limit" if best is None else
                 f"layer {best.layer}, scale {best.scale}: behaviour {best.behaviour:.3f} (baseline "
                 f"{self.baseline.behaviour:.3f}), perplexity {best.perplexity:.2f} (baseline {self.baseline.perplexity:.2f}), "
                 f"facts {best.fact_acc:.2f} (baseline {self.baseline.fact_acc:.2f})")  # fmt: skip
        rep.table("Cells (first row: unsteered baseline)", self.header(), self.rows())
        rep.figure("heatmap", self.heatmap(), "Behaviour change and capability cost")
        rep.data = {**self.to_dict(), "best": None if best is None else asdict(best)}
        return rep


@dataclass
class Capability:
    """What the capability cost is measured on."""

    texts: list[str]
    """Neutral texts for perplexity."""
    questions: list[tuple[str, str]]
    """(question, answer) pairs for fact accuracy."""
    max_new_tokens: int = 8

    @classmethod
    def default(cls, n_texts: int = 12, n_facts: int = 12) -> Capability:
        return cls(neutral_texts(n_texts), facts(n_facts))


def _score(model: Model, behaviour: Callable[[Model], float], cap: Capability,
           extra: Mapping[str, Callable[[Model], float]]) -> tuple[float, float, float, dict[str, float]]:  # fmt: skip
    b = float(behaviour(model))
    more = {k: float(fn(model)) for k, fn in extra.items()}
    return b, perplexity(model, cap.texts), fact_accuracy(model, cap.questions, max_new_tokens=cap.max_new_tokens), more


def sweep(
    model: Model,
    vector: SteeringVector,
    behaviour: Callable[[Model], float],
    *,
    layers: Sequence[int],
    scales: Sequence[float],
    positions: Positions = "all",
    capability: Capability | None = None,
    behaviour_name: str = "behaviour",
    extra: Mapping[str, Callable[[Model], float]] | None = None,
    checkpoint: str | Path | None = None,
    behaviour_data: object = None,
    progress: Callable[[str], None] | None = print,
) -> SweepResult:
    """Score ``behaviour`` and the capability cost for every (layer, scale), plus the unsteered baseline.

    ``extra`` names more metrics recorded per cell (e.g. a log-probability beside a generated-text rate).
    ``behaviour_data`` is what the behaviour reads (its prompts and settings): with the vector, the
    capability set, the positions and the model's weights it makes the checkpoint's identity, so a
    checkpoint written for other work is refused (:class:`~lmscope.experiments.StaleResume`).
    Adding layers or scales reuses the finished cells.
    """
    if not layers or not scales:
        raise ValueError("a sweep needs at least one layer and one scale")
    for layer in layers:
        vector[layer]  # raises with the layers the vector has
    cap = capability or Capability.default()
    more = dict(extra or {})
    work = identity(
        {"kind": "steering_sweep", "behaviour": behaviour_name, "positions": str(positions), "extra": sorted(more),
         "capability": {"texts": cap.texts, "questions": cap.questions, "max_new_tokens": cap.max_new_tokens}},
        model=model, data={"vector": {str(k): v for k, v in vector.directions.items()}, "behaviour": behaviour_data},
    )  # fmt: skip
    done = CellCheckpoint(checkpoint, work)

    def run(key: str, layer: int, scale: float) -> Cell:
        if key in done:
            return Cell(**done.get(key))
        t0 = time.time()
        if layer < 0:
            b, p, f, x = _score(model, behaviour, cap, more)
        else:
            with steer(model, vector, layers=[layer], scale=scale, positions=positions):
                b, p, f, x = _score(model, behaviour, cap, more)
        cell = Cell(layer, float(scale), b, p, f, round(time.time() - t0, 2), x)
        done.put(key, asdict(cell))
        if progress is not None:
            shown = "".join(f" {k} {v:.3f}" for k, v in x.items())
            progress(f"layer {layer:>3} scale {scale:>6}: behaviour {b:.3f}{shown} ppl {p:.2f} facts {f:.2f} ({cell.seconds}s)")
        return cell

    base = run("baseline", -1, 0.0)
    cells = [run(f"{layer},{float(s)}", layer, float(s)) for layer in layers for s in scales]
    return SweepResult(behaviour_name, base, cells, str(positions), {"vector_method": vector.method})


def confirm(model: Model, vector: SteeringVector, items: Callable[[Model], list[float]], *, layer: int, scale: float,
            goal: int = 1, positions: Positions = "all", n_random: int = 2, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """A cell chosen on dev prompts, measured on held-out ones: per-prompt scores steered, unsteered and with
    ``n_random`` equal-norm random vectors at the same layer and scale (averaged per prompt), each comparison
    with a bootstrap interval; the verdict is "effect" only when the vector beats both in the ``goal`` direction."""
    if n_random < 1:
        raise ValueError("confirm needs at least one random control")
    base = items(model)
    with steer(model, vector, layers=[layer], scale=scale, positions=positions):
        steered = items(model)
    draws = []
    for k in range(n_random):
        rand = SteeringVector({layer: random_like(vector[layer], seed + k)}, model.shape.d_model, "random")
        with steer(model, rand, layers=[layer], scale=scale, positions=positions):
            draws.append(items(model))
    control = [sum(col) / len(col) for col in zip(*draws, strict=True)]
    vs_random = compare_means(steered, control, direction=goal, seed=seed)
    vs_baseline = compare_means(steered, base, direction=goal, seed=seed)
    both = vs_random["verdict"] == vs_baseline["verdict"] == "effect"
    return {"layer": layer, "scale": scale, "steered": steered, "baseline": base, "random": control,
            "vs_random": vs_random, "vs_baseline": vs_baseline, "verdict": "effect" if both else "no effect"}  # fmt: skip
