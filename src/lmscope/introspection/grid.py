"""The concept-injection experiment over layers x strengths, and the Golden-Gate positive control.

:func:`introspection_grid` runs, for each (layer, strength), ``n_trials`` injection trials (concepts
drawn in a seeded order) and as many control trials, grades every answer and reports detection,
identification and false-positive rates (seed 000's protocol). :func:`golden_gate` is the
positive control: the same vectors added to every position while the model answers a plain
prompt ("Tell me about your day."), scoring how often it starts talking about the concept
(Templeton et al. 2024's Golden Gate Claude), beside the mention rate without injection. If the
vectors do not steer plain generation, a null introspection result says nothing.

Results checkpoint to JSON per cell, so an interrupted grid resumes.

    >>> import lmscope as ls
    >>> from lmscope.introspection import IntrospectionConfig, introspection_grid
    >>> res = introspection_grid(ls.load(), IntrospectionConfig(layers=[6, 10], strengths=[4, 8], n_trials=8))
    >>> res.rates[(6, 4.0)]["detection"], res.rates[(6, 4.0)]["false_positive"]
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmscope.core.hooks import intervene
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.experiments import CellCheckpoint, identity
from lmscope.experiments.report import Result, new_figure
from lmscope.introspection.concepts import ConceptVectors, ConceptWords, Read, concept_vectors, load_concepts
from lmscope.introspection.protocol import Grade, InjectFrom, RowwiseInjection, grade, names_concept, run_trials, summarize


@dataclass
class IntrospectionConfig:
    """Settings of the concept-injection grid."""

    layers: list[int] = field(default_factory=lambda: [6, 10, 14, 18])
    """Layers whose output receives the concept vector (and where it is read)."""
    strengths: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    """Multipliers of the concept vector."""
    concepts: list[str] | None = None
    """Concepts to inject (default: the built-in list)."""
    n_concepts: int = 8
    """How many of the concepts to use (the first n after a seeded shuffle)."""
    n_baseline: int = 40
    """How many baseline words to average."""
    n_trials: int = 8
    """Injection trials per cell; the same number of control trials is added (50% controls)."""
    read: Read = "last"
    """Where concept vectors are read: the prompt's last token or the concept word's token."""
    inject_from: InjectFrom = "trial"
    """Start of the injection: the trial line ("trial"), the assistant turn, or generated tokens only."""
    max_new_tokens: int = 32
    do_sample: bool = True
    temperature: float = 1.0
    seed: int = 0
    """Seeds the concept order; each cell samples with its own seed, so control answers differ between cells."""
    judge: str | None = None
    """The grading model's name when answers are graded by a model judge (None: the keyword grader)."""

    def __post_init__(self) -> None:
        if not self.layers or not self.strengths:
            raise ValueError("the grid needs at least one layer and one strength")
        if self.n_trials < 1 or self.n_concepts < 1 or self.n_baseline < 1:
            raise ValueError("n_trials, n_concepts and n_baseline must be >= 1")


@dataclass
class IntrospectionResult:
    """Per-cell rates, every graded trial, and the settings."""

    rates: dict[tuple[int, float], dict[str, float]]
    trials: list[dict[str, Any]]
    config: IntrospectionConfig
    vector_norms: dict[int, float]
    """Layer -> mean concept-vector norm (what a strength of 1 means)."""

    def figure(self):
        """Three heatmaps over layers x strengths: detection, identification, false positives."""
        layers = sorted({k[0] for k in self.rates})
        strengths = sorted({k[1] for k in self.rates})
        fig, axes = new_figure(1, 3, figsize=(13, 0.5 * len(layers) + 2.5))
        for ax, key in zip(axes, ("detection", "identification", "false_positive"), strict=True):
            vals = [[self.rates.get((layer, s), {}).get(key, float("nan")) for s in strengths] for layer in layers]
            im = ax.imshow(vals, vmin=0, vmax=1, cmap="magma", aspect="auto")
            for i, row in enumerate(vals):
                for j, v in enumerate(row):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if v < 0.5 else "k")
            ax.set_xticks(range(len(strengths)), [str(s) for s in strengths])
            ax.set_yticks(range(len(layers)), [str(x) for x in layers])
            ax.set_xlabel("strength")
            ax.set_ylabel("layer")
            ax.set_title(key.replace("_", " ") + " rate")
            fig.colorbar(im, ax=ax)
        return fig

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "vector_norms": self.vector_norms,
                "rates": [{"layer": k[0], "strength": k[1], **v} for k, v in sorted(self.rates.items())],
                "trials": self.trials}  # fmt: skip

    def write(self, folder: str | Path) -> Path:
        return self.report().write(folder)

    def report(self) -> Result:
        rep = Result("Concept injection: does the model notice an injected thought?")
        rep.table("Rates per cell (paper, Claude Opus 4.1: ~20% detection, 0 false positives)",
                  ["layer", "strength", "detection", "identification", "false positive", "injected", "controls"],
                  [[k[0], k[1], v["detection"], v["identification"], v["false_positive"], v["n_injected"], v["n_control"]]
                   for k, v in sorted(self.rates.items())])  # fmt: skip
        rep.figure("introspection_grid", self.figure(), "Rates over layers x strengths")
        sample = [[t["layer"], t["strength"], t["concept"] or "(control)", t["detected"], t["identified"], t["answer"][:160]]
                  for t in self.trials[:: max(1, len(self.trials) // 40)]]  # fmt: skip
        rep.table("Sample of graded answers", ["layer", "strength", "concept", "detected", "identified", "answer"], sample)
        rep.data = self.to_dict()
        return rep


def dev_test_rates(result: IntrospectionResult, concepts: Sequence[str]) -> dict[tuple[int, float], dict[str, dict[str, float]]]:
    """Per cell, the rates on a dev and a disjoint test half of its trials, so that a cell chosen on dev is
    reported on trials the choice never read: injection trials split by concept (every other concept of
    ``concepts`` is dev; with one concept, every other trial), control trials alternately."""
    dev_concepts = set(concepts[::2]) if len(concepts) > 1 else None
    halves: dict[tuple[int, float], dict[str, list[dict[str, Any]]]] = {}
    seen: dict[tuple[tuple[int, float], bool], int] = {}
    for t in result.trials:
        cell = (t["layer"], t["strength"])
        control = t["concept"] is None
        n = seen[(cell, control)] = seen.get((cell, control), -1) + 1
        dev = n % 2 == 0 if control or dev_concepts is None else t["concept"] in dev_concepts
        halves.setdefault(cell, {"dev": [], "test": []})["dev" if dev else "test"].append(t)
    return {cell: {half: summarize(rows) for half, rows in parts.items()} for cell, parts in halves.items()}


def pick_concepts(cfg: IntrospectionConfig, words: ConceptWords) -> list[str]:
    """The concepts a grid uses: the configured (or built-in) list, seeded shuffle, first ``n_concepts``."""
    pool = list(cfg.concepts) if cfg.concepts is not None else list(words.concepts)
    random.Random(cfg.seed).shuffle(pool)
    return pool[: cfg.n_concepts]


def introspection_grid(
    model: Model,
    config: IntrospectionConfig | None = None,
    *,
    words: ConceptWords | None = None,
    vectors: ConceptVectors | None = None,
    checkpoint: str | Path | None = None,
    progress: Callable[[str], None] | None = print,
    judge: Callable[[str, Sequence[str]], Grade] | None = None,
) -> IntrospectionResult:
    """Run injection and control trials for every (layer, strength) and grade them (with the keyword :func:`grade`,
    or ``judge(answer, names)``, e.g. a :class:`~lmscope.introspection.judge.ModelJudge`, whose name must then be
    ``config.judge`` so a checkpoint graded otherwise is not reused)."""
    if (judge is None) != (config is None or config.judge is None):
        raise ValueError("pass a judge exactly when config.judge names it (it is part of the checkpoint's identity)")
    cfg = config or IntrospectionConfig()
    words = words or load_concepts()
    concepts = pick_concepts(cfg, words)
    vecs = vectors or concept_vectors(model, concepts, words.baseline[: cfg.n_baseline], layers=cfg.layers, read=cfg.read)
    rng = random.Random(cfg.seed + 1)
    order = [concepts[i % len(concepts)] for i in range(cfg.n_trials)]
    rng.shuffle(order)
    plan: list[str | None] = [*order, *([None] * cfg.n_trials)]
    work = identity({"kind": "introspection_grid", **asdict(cfg)}, model=model,
                    data={"concepts": concepts, "plan": plan, "words": asdict(words),
                          "vectors": {f"{c}@{layer}": vecs.at(c, layer) for c in concepts for layer in cfg.layers}})  # fmt: skip
    done = CellCheckpoint(checkpoint, work)
    trials: list[dict[str, Any]] = []
    rates: dict[tuple[int, float], dict[str, float]] = {}
    for li, layer in enumerate(cfg.layers):
        for si, strength in enumerate(cfg.strengths):
            key = f"{layer},{float(strength)}"
            if key not in done:
                t0 = time.time()
                rows = torch.stack([vecs.at(c, layer) if c else torch.zeros(model.shape.d_model) for c in plan])
                answers = run_trials(model, rows, layer=layer, strength=float(strength), inject_from=cfg.inject_from,
                                     max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                     temperature=cfg.temperature, seed=cfg.seed + 1000 * li + si)  # fmt: skip
                cell = []
                for c, a in zip(plan, answers, strict=True):
                    names = words.names(c) if c else ["(none)"]
                    g = grade(a, names)
                    row = {"layer": layer, "strength": float(strength), "concept": c, "answer": a, "detected": g.detected,
                           "named": g.named and c is not None, "identified": g.identified and c is not None}  # fmt: skip
                    if judge is not None:  # the judge decides; the keyword grade is kept beside it for agreement
                        j = judge(a, names)
                        row |= {"keyword_detected": row["detected"], "keyword_identified": row["identified"],
                                "detected": j.detected, "named": j.named and c is not None,
                                "identified": j.identified and c is not None}  # fmt: skip
                    cell.append(row)
                done.put(key, cell)
                if progress is not None:
                    s = summarize(cell)
                    progress(f"layer {layer} strength {strength}: detect {s['detection']:.2f} identify "
                             f"{s['identification']:.2f} false+ {s['false_positive']:.2f} ({time.time() - t0:.0f}s)")  # fmt: skip
            trials.extend(done.get(key))
            rates[(layer, float(strength))] = summarize(done.get(key))
    norms = {layer: sum(vecs.norms(layer).values()) / len(vecs.vectors) for layer in cfg.layers}
    return IntrospectionResult(rates, trials, cfg, norms)


@dataclass
class GoldenGateResult:
    """Concept mention rates in plain generation with and without injection."""

    rows: list[dict[str, Any]]
    """One per (layer, strength): mention rate with injection, and the baseline rate without it."""
    baseline_mention: float
    samples: list[dict[str, Any]]


def golden_gate(
    model: Model,
    vectors: ConceptVectors,
    words: ConceptWords,
    *,
    layers: list[int],
    strengths: list[float],
    prompt: str = "Tell me about your day.",
    max_new_tokens: int = 32,
    progress: Callable[[str], None] | None = print,
) -> GoldenGateResult:
    """Add each concept's vector at every position while the model answers ``prompt``; how often is the concept named?"""
    concepts = list(vectors.vectors)
    batch = model.tokenize([prompt] * len(concepts), chat=True)
    base_out = model.tokenizer.batch_decode(model.generate_tokens(batch, max_new_tokens=max_new_tokens), skip_special_tokens=True)
    base = sum(names_concept(o, words.names(c)) for o, c in zip(base_out, concepts, strict=True)) / len(concepts)
    rows, samples = [], []
    for layer in layers:
        stack = torch.stack([vectors.at(c, layer) for c in concepts])
        for s in strengths:
            edit = RowwiseInjection(vectors=stack, strength=float(s), start=0)
            with intervene(model, {Site("resid_post", layer): edit}):
                outs = model.tokenizer.batch_decode(model.generate_tokens(batch, max_new_tokens=max_new_tokens),
                                                    skip_special_tokens=True)  # fmt: skip
            hits = [names_concept(o, words.names(c)) for o, c in zip(outs, concepts, strict=True)]
            rows.append({"layer": layer, "strength": float(s), "mention_rate": sum(hits) / len(hits),
                         "baseline_mention_rate": base})  # fmt: skip
            samples += [{"layer": layer, "strength": float(s), "concept": c, "text": o}
                        for c, o in zip(concepts, outs, strict=True)]  # fmt: skip
            if progress is not None:
                progress(f"golden gate layer {layer} strength {s}: mention {sum(hits) / len(hits):.2f} (baseline {base:.2f})")
    return GoldenGateResult(rows, base, samples)
