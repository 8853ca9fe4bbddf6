"""The tour: every seed finding, measured on the bundled model, in one page.

The tour is a list of experiment values (:data:`STOPS`). Each stop runs its experiments on one
model into ``OUT/<stop>/<step>/`` and reads the number that tests the seed's finding from the
last result's summary; its verdict (*reproduced*, *partly*, *not at this scale*) is computed from
that number with the thresholds written next to it, and the page shows the number, the paper's
number, the verdict and a link to the experiment's own page. A finished step whose ``result.json``
carries the same identity (settings, weights, data, version) is not run again, so an interrupted
tour resumes where it stopped; a step whose settings changed runs again.

    lmscope tour                              # every stop on the bundled model
    lmscope tour --only lens,icl-rank1
    lmscope tour --tiny llama                 # the stops marked tiny_ok: mechanics only, numbers mean nothing
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmscope.circuits.experiments import Circuit, Patch
from lmscope.experiments import Context, Experiment, Result, param, read_result, run
from lmscope.experiments.report import html_table
from lmscope.experiments.runner import experiment_identity
from lmscope.icl.experiments import ICLRank1, ICLVectors
from lmscope.introspection.experiments import Introspect
from lmscope.lenses.experiments import LogitLens, MultiHop, Patchscope
from lmscope.neurons.experiments import NeuronsAblate
from lmscope.relations.experiments import LRE
from lmscope.steering.experiments import SteerExtract, SteerOrganism, SteerSweep

Measure = Callable[[dict[str, Any]], float]
"""The number that tests a finding, from the last step's ``summary``."""


@dataclass(frozen=True)
class Stop:
    """One seed finding, the experiments that measure it, and how its verdict is computed."""

    name: str
    finding: str
    paper: str
    """The paper's number (or claim), as written in the seed."""
    steps: tuple[tuple[str, Experiment], ...]
    """(step folder, experiment); ``{stop}`` in a string field is this stop's folder."""
    measure: Measure
    what: str
    """What the measured number is."""
    reproduced: float
    partly: float
    """Verdict thresholds on the measured number (higher is better unless ``lower_is_better``)."""
    lower_is_better: bool = False
    tiny_ok: bool = False
    """Whether the stop runs on a tiny random model (mechanics only)."""

    def verdict(self, value: float | None) -> str:
        if value is None or value != value:
            return "no number"
        sign = -1 if self.lower_is_better else 1
        if sign * value >= sign * self.reproduced:
            return "reproduced"
        return "partly" if sign * value >= sign * self.partly else "not at this scale"


def _emergence(s: dict[str, Any]) -> float:
    return float("nan") if s.get("emergence_median") is None else s["emergence_median"] / s["n_sites"]


def _icl_gap(s: dict[str, Any]) -> float:
    tasks = {k.rsplit("_", 2)[0] for k in s if k.endswith("_best_acc")}
    return sum(s[f"{t}_best_acc"] - s[f"{t}_zero_shot"] for t in tasks) / len(tasks)


STOPS: tuple[Stop, ...] = (
    Stop("lens", "Answers appear only in the last layers of the residual stream (logit lens).",
         "late layers (nostalgebraist 2020)", (("lens", LogitLens(demo=True)),), _emergence,
         "median emergence layer / depth", 0.6, 0.4),
    Stop("patchscope", "A hidden state can describe itself when patched into a description prompt.",
         "entity descriptions decodable from early-mid layers (Ghandeharioun et al. 2024)",
         (("patchscope", Patchscope(source=("Albert Einstein", "Tokyo"), preset="description", layers=tuple(range(0, 25, 4)),
                                    max_new_tokens=8, expect=("physicist", "scientist", "German", "Japan", "capital",
                                                              "city"))),),  # fmt: skip
         lambda s: s["expect_hit_rate"], "share of (source, layer) patches naming the entity's kind", 0.3, 0.1),
    Stop("multihop", "Two-hop failures can be fixed by backpatching a later layer's state into an earlier one.",
         "up to 0.66 of failures fixed (Biran et al. 2024)",
         (("multihop", MultiHop(limit=24, max_failed=8, stride=8)),),
         lambda s: s.get("backpatch_fix_rate", float("nan")) - s.get("control_fix_rate", 0.0),
         "fix rate minus the unrelated-prompt control", 0.3, 0.1),
    Stop("steer-sentiment", "A contrastive vector added during generation steers the behaviour.",
         "sentiment shifts with the vector (Turner et al. 2023; Rimsky et al. 2024)",
         (("extract", SteerExtract(contrast="sentiment", max_per_side=24)),
          ("sweep", SteerSweep(vector="{stop}/extract/vector.safetensors", behaviour="sentiment", layers=(10,),
                               strength=(2.0, 4.0), n_prompts=4, max_new_tokens=16, n_capability=4))),
         lambda s: float("nan") if s["best"] is None else s["best"] - s["baseline"],
         "sentiment of the best cell minus the baseline (within 2x perplexity)", 0.3, 0.1),
    Stop("refusal-organism", "Refusal is mediated by one direction: adding it makes harmless requests refused, "
         "removing it makes harmful ones answered.",
         "adding induces refusal, ablation removes it, across 13 chat models (Arditi et al. 2024)",
         (("organism", SteerOrganism()),),
         lambda s: min(s["add_harmless_refused"] - s["add_control"], s["subtract_harmful_answered"] - s["subtract_control"]),
         "the smaller of two effects beyond their random controls (add: harmless refused; subtract: harmful answered)",
         0.5, 0.2),
    Stop("introspection", "Injected concepts steer text (Golden Gate); reporting them is much harder.",
         "~20% identification at 0 false positives (Lindsey 2025, Claude Opus 4.1)",
         (("grid", Introspect(layers=(10,), strength=(0.5,), n_concepts=3, trials=4, read="word", golden_gate=True,
                              max_new_tokens=16)),),  # fmt: skip
         lambda s: s["best_identification"] - s["best_false_positive"],
         "identification minus false-positive rate, best cell", 0.2, 0.05),
    Stop("icl-vectors", "A few-shot task vector added to a bare query makes the model do the task.",
         "task vectors recover most of ICL accuracy (Hendel et al. 2023; Todd et al. 2024)",
         (("vectors", ICLVectors(tasks=("antonyms", "present_past"), layers=(12, 17, 21, 27), n=12)),), _icl_gap,
         "best vector accuracy minus zero-shot, mean over tasks", 0.3, 0.1),
    Stop("icl-rank1", "In-context learning equals a rank-1 update of the MLP weights.",
         "an exact identity (Dherin et al. 2025)", (("rank1", ICLRank1(tasks=("antonyms",), queries=2, transfer=False)),),
         lambda s: s["max_rel_err_fp32"], "max fp32 relative error over layers", 1e-4, 1e-2, lower_is_better=True,
         tiny_ok=True),
    Stop("ioi-patching", "IOI: the answer moves from the name positions to the final position in late layers.",
         "final-position residual restores the answer in late layers (Wang et al. 2023)",
         (("patch", Patch(task="ioi", n=16, max_examples=6, variants=("resid", "layers"))),),
         lambda s: s["resid_last_layer_final_position"], "restored by the final position at the last layer", 0.8, 0.5),
    Stop("ioi-circuit", "A pruned circuit is sufficient under mean ablation; random ones of its size are not.",
         "circuits recover most of the metric; random circuits do not (Conmy et al. 2023)",
         (("circuit", Circuit(task="ioi", n=16, max_examples=6, method="acdc-nodes", threshold=0.05, n_random=3)),),
         lambda s: s["sufficiency"] - s["random_sufficiency_mean"], "sufficiency minus that of random circuits", 0.4, 0.15),
    Stop("lre", "Relation decoding is often linear: subject state x W + b gives the object.",
         "48% of relations linear for GPT-J (Hernandez et al. 2024)",
         (("lre", LRE(relations=("word_plural", "country_capital"), layers=(8,), n_prompts=2)),),
         lambda s: s["linear_fraction"], "share of relations with faithfulness >= 0.6", 0.35, 0.15),
    Stop("neurons-ablate", "Ablating a single neuron rarely changes the output.",
         "single neurons rarely matter alone (seed lecture on neuron analysis)",
         (("ablate", NeuronsAblate(layer=19, neurons=(1467,), windows=4, controls=2)),),
         lambda s: s["mean_top1_change"], "share of top-1 predictions changed by mean ablation", 0.05, 0.15,
         lower_is_better=True),
)  # fmt: skip


def _resolve(exp: Experiment, folder: Path) -> Experiment:
    """``{stop}`` in string fields -> the stop's folder."""
    changes = {f.name: getattr(exp, f.name).replace("{stop}", str(folder)) for f in dataclasses.fields(exp)
               if isinstance(getattr(exp, f.name), str) and "{stop}" in getattr(exp, f.name)}  # fmt: skip
    return dataclasses.replace(exp, **changes) if changes else exp


def _done(exp: Experiment, model: Any, folder: Path) -> dict[str, Any] | None:
    """The finished result in ``folder`` if it is this very work (same identity), else None."""
    try:
        saved = read_result(folder)
    except (FileNotFoundError, ValueError):
        return None
    return saved if (saved.get("identity") or {}).get("digest") == experiment_identity(exp, model).digest else None


@dataclass(frozen=True)
class Tour(Experiment):
    """Every seed finding measured on one model, with the paper's number and a computed verdict (resumable)."""

    command = "tour"
    about = "run every seed-finding stop into one page with verdicts (resumable)"
    only: tuple[str, ...] = param((), "stop names to run (default all)")
    list: bool = param(False, "list the stops and exit")

    def needs(self) -> dict[str, str]:
        return {k: v for s in STOPS if not self.only or s.name in self.only for _, e in s.steps for k, v in e.needs().items()}

    def check(self) -> None:
        unknown = sorted(set(self.only) - {s.name for s in STOPS})
        if unknown:
            raise ValueError(f"unknown stop(s) {unknown}; stops: {[s.name for s in STOPS]}")

    def run(self, model: Any, ctx: Context) -> Result:
        page = Result(f"lmscope tour on {model.model_id}")
        if self.list:
            for s in STOPS:
                page.say(f"{s.name:16s} {s.finding}")
            return page
        root = ctx.folder()
        tiny = model.model_id.startswith("tiny-")
        rows, data = [], {}
        for stop in STOPS:
            if self.only and stop.name not in self.only:
                continue
            if tiny and not stop.tiny_ok:
                rows.append([stop.name, html.escape(stop.finding), html.escape(stop.paper), "", "skipped (no tiny mode)", ""])
                continue
            summary, status = {}, "ran"
            for step, exp in stop.steps:
                folder = root / stop.name / step
                exp = _resolve(exp, root / stop.name)
                saved = _done(exp, model, folder)
                if saved is None:
                    ctx.log(f"{stop.name}/{step}: {exp.command}")
                    summary = run(exp, model=model, out=folder, quiet=ctx.quiet).summary
                else:
                    summary, status = saved["summary"], "done earlier"
            value = stop.measure(summary)
            verdict = stop.verdict(value)
            data[stop.name] = {"value": value, "verdict": verdict, "what": stop.what, "paper": stop.paper, "status": status}
            link = f"<a href='{stop.name}/{stop.steps[-1][0]}/index.html'>{stop.name}</a>"
            rows.append([link, html.escape(stop.finding), html.escape(stop.paper),
                         html.escape(f"{value:.3g} ({stop.what})"), verdict, status])  # fmt: skip
            page.say(f"{stop.name:16s} {verdict:18s} {value:.3g} = {stop.what}")
        page.sections.append(("Seed findings", html_table(["stop", "finding", "paper", "measured", "verdict", "run"], rows,
                                                           raw=True)))  # fmt: skip
        page.summary = {name: d["verdict"] for name, d in data.items()}
        page.data = data
        return page
