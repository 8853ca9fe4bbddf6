"""``lmscope reproduce``: every seed finding measured on one model, beside the paper's number, in one report.

The report is a list of experiment values (:data:`STOPS`). Each stop runs its experiments into
``OUT/<stop>/<step>/`` and reads the number that tests the seed's finding from the last result's
summary, and the number of its control where it has one; its verdict (*reproduced*, *partly*,
*not at this scale*) is computed from that number with the thresholds written next to it. The
report (``report.md``, ``index.html``, ``result.json``) gives, per stop, the finding, the paper's
number, ours, the control, the verdict and the identity of the result it came from, so a number
quoted in the docs can be traced to the command and settings that wrote it. A finished step whose
``result.json`` carries the same identity (settings, weights, data, version) is not run again, so
an interrupted run resumes where it stopped; a step whose settings changed runs again.

    lmscope reproduce                              # every stop at full size on the bundled model
    lmscope reproduce --only lens,icl-rank1
    lmscope reproduce --size smoke --tiny llama    # every stop, tiny settings: mechanics only (CI)
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmscope.circuits.experiments import Circuit, Patch
from lmscope.experiments import Context, Experiment, Result, StaleResume, param, read_result, run
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
Control = Callable[[dict[str, Any]], str]
"""The control's number(s) as a short text, from the last step's ``summary``."""
SIZES = ("full", "smoke")


@dataclass(frozen=True)
class Stop:
    """One seed finding, the experiments that measure it, its control and how its verdict is computed."""

    name: str
    finding: str
    paper: str
    """The paper's number (or claim), as written in the seed."""
    steps: tuple[tuple[str, Experiment], ...]
    """(step folder, experiment) at full size; ``{stop}`` in a string field is this stop's folder."""
    measure: Measure
    what: str
    """What the measured number is."""
    reproduced: float
    partly: float
    """Verdict thresholds on the measured number (higher is better unless ``lower_is_better``)."""
    lower_is_better: bool = False
    control: Control | None = None
    smoke: Mapping[str, Mapping[str, Any]] | None = field(default_factory=dict)
    """Field overrides per step for ``--size smoke`` (tiny settings that run on random weights); None: it cannot."""
    smoke_files: Mapping[str, str] = field(default_factory=dict)
    """Files written into the stop's folder before a smoke run (its tiny inputs)."""
    no_smoke: str = ""
    """Why the stop cannot run on random weights (when ``smoke`` is None)."""

    def verdict(self, value: float | None) -> str:
        if value is None or value != value:
            return "no number"
        sign = -1 if self.lower_is_better else 1
        if sign * value >= sign * self.reproduced:
            return "reproduced"
        return "partly" if sign * value >= sign * self.partly else "not at this scale"

    def plan(self, size: str) -> tuple[tuple[str, Experiment], ...]:
        """The steps at ``size`` (smoke: each step with its overrides)."""
        if size == "full":
            return self.steps
        if self.smoke is None:
            raise ValueError(f"stop {self.name} has no smoke size: {self.no_smoke}")
        unknown = set(self.smoke) - {step for step, _ in self.steps}
        if unknown:
            raise ValueError(f"stop {self.name}: smoke overrides for unknown step(s) {sorted(unknown)}")
        return tuple((step, dataclasses.replace(exp, **self.smoke.get(step, {}))) for step, exp in self.steps)


def _emergence(s: dict[str, Any]) -> float:
    return float("nan") if s.get("emergence_median") is None else s["emergence_median"] / s["n_sites"]


def _icl_tasks(s: dict[str, Any]) -> list[str]:
    return sorted({k.rsplit("_", 2)[0] for k in s if k.endswith("_best_acc")})


def _icl_gap(s: dict[str, Any]) -> float:
    tasks = _icl_tasks(s)
    return sum(s[f"{t}_best_acc"] - max(s[f"{t}_zero_shot"], s.get(f"{t}_control", 0.0)) for t in tasks) / len(tasks)


def _num(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _held_out(s: dict[str, Any]) -> float:
    """0 when no cell moved the behaviour on dev (nothing to confirm: no effect)."""
    return 0.0 if s.get("test_steered") is None else min(s["test_vs_random"], s["test_vs_baseline"])


def _held_out_control(s: dict[str, Any]) -> str:
    if s.get("test_steered") is None:
        return "no cell beat the dev baseline within 2x perplexity"
    return (f"unsteered {_num(s.get('test_baseline'))}, equal-norm random {_num(s.get('test_random'))}, "
            f"ours {_num(s.get('test_steered'))} at L{s.get('best_layer')} x{s.get('best_strength')} ({s.get('verdict')})")


_CAPITALS = ("physicist", "scientist", "German", "Japan", "capital", "city")
_WORDS = "table\nriver\nsong\nlamp\n"
_PAIRS = "".join(json.dumps({"clean": f"the dog {x} the", "corrupt": f"the a {x} the", "answer": " dog", "wrong": " a"}) + "\n"
                 for x in ("a", "the", "dog", "a a", "the the", "dog dog"))  # fmt: skip
"""Clean/corrupt pairs the tiny tokenizer reads as equal-length prompts with one-token answers (smoke only)."""

_SEPARABILITY_SETS = (
    ("sentiment", "sentiment", None), ("truthfulness-completion", "truthfulness", "completion"),
    ("truthfulness-ab", "truthfulness", "ab"), ("sycophancy-completion", "sycophancy", "completion"),
    ("sycophancy-ab", "sycophancy", "ab"), ("concept-topic", "concept_topic", None),
    ("harmful-harmless", "harmful_harmless", None),
)  # fmt: skip
"""(step, built-in contrast, format) of the separability stop; the last is the one its verdict reads."""

STOPS: tuple[Stop, ...] = (
    Stop("lens", "Answers appear only in the last layers of the residual stream (logit lens).",
         "late layers (nostalgebraist 2020)", (("lens", LogitLens(demo=True)),), _emergence,
         "median emergence layer / depth", 0.6, 0.4,
         smoke={"lens": {"demo": False, "prompt": ("the dog", "a dog"), "target": " the"}}),
    Stop("patchscope", "A hidden state can describe itself when patched into a description prompt.",
         "entity descriptions decodable from early-mid layers (Ghandeharioun et al. 2024)",
         (("patchscope", Patchscope(source=("Albert Einstein", "Tokyo"), preset="description", layers=tuple(range(0, 25, 4)),
                                    max_new_tokens=8, expect=_CAPITALS)),),
         lambda s: s["expect_hit_rate"], "share of (source, layer) patches naming the entity's kind", 0.3, 0.1,
         smoke={"patchscope": {"layers": (0, 2), "max_new_tokens": 2}}),
    Stop("patchscope-next-token", "Next-token inspection by patching reads a layer's prediction earlier than the logit lens.",
         "Patchscope precision@1 above the logit lens across most layers (Ghandeharioun et al. 2024, Fig. 2)",
         (("next-token", Patchscope(relation="country_capital", preset="next_token", layers=(*range(0, 28, 3), 29))),),
         lambda s: s["next_token_minus_lens"], "precision@1 of Patchscope minus the logit lens's, mean over layers",
         0.1, 0.03,
         control=lambda s: (f"logit lens on the same states: mean precision@1 {_num(s.get('lens_precision_mean'))} "
                            f"(Patchscope {_num(s.get('next_token_precision_mean'))}; above the lens at "
                            f"{s.get('layers_above_lens')}, below at {s.get('layers_below_lens')} layers)"),
         smoke={"next-token": {"relation": None, "source": ("the dog", "a dog"), "layers": (0, 1)}}),
    Stop("multihop", "Two-hop failures can be fixed by backpatching a later layer's state into an earlier one.",
         "up to 0.66 of failures fixed (Biran et al. 2024)",
         (("multihop", MultiHop(limit=24, max_failed=8, stride=8)),),
         lambda s: s.get("backpatch_fix_rate", float("nan")) - s.get("control_fix_rate", 0.0),
         "fix rate minus the unrelated-prompt control", 0.3, 0.1,
         control=lambda s: f"unrelated-prompt backpatch fixes {_num(s.get('control_fix_rate'))}",
         smoke=None, no_smoke="it needs facts the model knows (a random model composes none)"),
    Stop("steer-sentiment", "A contrastive vector added during generation steers the behaviour.",
         "sentiment shifts with the vector (Turner et al. 2023; Rimsky et al. 2024)",
         (("extract", SteerExtract(contrast="sentiment", max_per_side=24)),
          ("sweep", SteerSweep(vector="{stop}/extract/vector.safetensors", behaviour="sentiment", layers=(10,),
                               strength=(2.0, 4.0), n_prompts=8, max_new_tokens=16, n_capability=4))),
         _held_out, "test sentiment of the cell chosen on dev minus the larger of unsteered and equal-norm random", 0.3, 0.1,
         control=_held_out_control,
         smoke={"extract": {"max_per_side": 4},
                "sweep": {"layers": (1,), "strength": (2.0,), "n_prompts": 2, "max_new_tokens": 3, "n_capability": 2}}),
    *(Stop(f"steer-{name}", claim, paper,
           (("extract", SteerExtract(contrast=contrast, max_per_side=60)),
            ("sweep", SteerSweep(vector="{stop}/extract/vector.safetensors", behaviour=name, layers=(6, 10, 14),
                                 strength=strengths, n_prompts=16, max_new_tokens=24, n_capability=8))),
           _held_out, f"test {what} of the cell chosen on dev minus the larger of unsteered and equal-norm random",
           0.25, 0.1, control=_held_out_control,
           smoke={"extract": {"max_per_side": 4},
                  "sweep": {"layers": (1,), "strength": (2.0,), "n_prompts": 2, "max_new_tokens": 3, "n_capability": 2}})
      for name, contrast, strengths, what, claim, paper in (
          ("refusal", "harmful_harmless", (4.0, 8.0), "refusal rate on harmless requests",
           "Adding the refusal vector makes the model refuse a harmless request (the seed's yoga example).",
           "a harmless request refused with the vector added (seed lecture; Arditi et al. 2024)"),
          ("sycophancy", "sycophancy", (1.0, 2.0, 4.0), "share of pairs preferring the sycophantic answer",
           "A sycophancy vector added to a neutral question makes the answer flattering.",
           "sycophancy moves with the vector on held-out questions (seed lecture; Rimsky et al. 2024)"),
          ("truthfulness", "truthfulness", (1.0, 2.0, 4.0), "share of pairs preferring the truthful answer",
           "A truthfulness vector makes the answer to a superstition factual.",
           "truthful answers rise with the vector (seed lecture; Li et al. 2023 ITI; Zou et al. 2023)"))),
    Stop("separability", "Behaviours are linearly readable from the residual stream: a direction fitted on train "
         "examples separates held-out ones.",
         "harmful vs harmless separable in middle layers (Arditi et al. 2024); concepts linearly readable (Zou et al. 2023)",
         tuple((name, SteerExtract(contrast=contrast, fmt=fmt, method="all", max_per_side=60, shuffled=True))
               for name, contrast, fmt in _SEPARABILITY_SETS),
         lambda s: s["mean_diff_chosen_separability"] - s["mean_diff_chosen_control"],
         "harmful vs harmless: held-out accuracy of the mean-difference direction at the layer chosen on train accuracy, "
         "minus the same pipeline on shuffled train labels (mean of 8 balanced shuffles)", 0.25, 0.1,
         control=lambda s: (f"shuffled train labels at layer {s.get('mean_diff_chosen_layer')}: "
                            f"{_num(s.get('mean_diff_chosen_control'))} +- {_num(s.get('mean_diff_chosen_control_sd'))} sd "
                            f"(ours {_num(s.get('mean_diff_chosen_separability'))}; "
                            f"probe {_num(s.get('probe_chosen_separability'))} vs {_num(s.get('probe_chosen_control'))})"),
         smoke={name: {"max_per_side": 4} for name, _, _ in _SEPARABILITY_SETS}),
    Stop("refusal-organism", "Refusal is mediated by one direction: adding it makes harmless requests refused, "
         "removing it makes harmful ones answered.",
         "adding induces refusal, ablation removes it, across 13 chat models (Arditi et al. 2024)",
         (("organism", SteerOrganism()),),
         lambda s: min(s["add_harmless_refused"] - s["add_control"], s["subtract_harmful_answered"] - s["subtract_control"]),
         "the smaller of two effects beyond their random controls (add: harmless refused; subtract: harmful answered)",
         0.5, 0.2,
         control=lambda s: (f"random direction: add {_num(s.get('add_control'))} (ours {_num(s.get('add_harmless_refused'))}), "
                            f"subtract {_num(s.get('subtract_control'))} (ours {_num(s.get('subtract_harmful_answered'))})"),
         smoke={"organism": {"steps": 2, "layers": (1,), "strength": (2.0,), "n_random": 1, "max_new_tokens": 3}}),
    Stop("introspection", "Injected concepts steer text (Golden Gate); reporting them is much harder.",
         "~20% identification at 0 false positives (Lindsey 2025, Claude Opus 4.1)",
         (("grid", Introspect(layers=(10,), strength=(0.5,), n_concepts=4, trials=8, read="word", golden_gate=True,
                              max_new_tokens=16)),),  # fmt: skip
         lambda s: s["test_identification"] - s["test_false_positive"],
         "identification minus false-positive rate on held-out trials (concepts, controls) of the cell chosen on dev",
         0.2, 0.05,
         control=lambda s: (f"false positives on held-out uninjected trials {_num(s.get('test_false_positive'))} "
                            f"({s.get('test_controls')} controls; identification {_num(s.get('test_identification'))} of "
                            f"{s.get('test_injected')} injected)"),
         smoke={"grid": {"layers": (1,), "strength": (1.0,), "n_concepts": 1, "trials": 2, "max_new_tokens": 3,
                         "baseline": "{stop}/words.txt"}},
         smoke_files={"words.txt": _WORDS}),
    Stop("icl-vectors", "A few-shot task vector added to a bare query makes the model do the task.",
         "task vectors recover most of ICL accuracy (Hendel et al. 2023; Todd et al. 2024)",
         (("vectors", ICLVectors(tasks=("antonyms", "present_past"), layers=(12, 17, 21, 27), n=12)),), _icl_gap,
         "test accuracy of the vector chosen on dev minus the larger of zero-shot and its random control, mean over tasks",
         0.3, 0.1,
         control=lambda s: "; ".join(f"{t}: zero-shot {_num(s[f'{t}_zero_shot'])}, equal-norm random "
                                     f"{_num(s.get(f'{t}_control'))}, ours {_num(s[f'{t}_best_acc'])}" for t in _icl_tasks(s)),
         smoke={"vectors": {"tasks": ("antonyms",), "layers": (1,), "n": 2, "k": 2, "fv_tasks": 1, "fv_heads": 2}}),
    Stop("icl-rank1", "In-context learning equals a rank-1 update of the MLP weights.",
         "an exact identity (Dherin et al. 2025)", (("rank1", ICLRank1(tasks=("antonyms",), queries=2, transfer=False)),),
         lambda s: s["max_rel_err_fp32"], "max fp32 relative error over layers", 1e-4, 1e-2, lower_is_better=True,
         control=lambda s: f"without the update: min relative error {_num(s.get('min_rel_err_no_update'))}",
         smoke={"rank1": {"queries": 1, "k": 2}}),
    Stop("ioi-patching", "IOI: the answer moves from the name positions to the final position in late layers.",
         "final-position residual restores the answer in late layers (Wang et al. 2023)",
         (("patch", Patch(task="ioi", n=16, max_examples=6, variants=("resid", "layers"))),),
         lambda s: s["resid_last_layer_final_position"], "restored by the final position at the last layer", 0.8, 0.5,
         smoke={"patch": {"pairs": "{stop}/pairs.jsonl", "only_correct": False, "max_examples": 2}},
         smoke_files={"pairs.jsonl": _PAIRS}),
    Stop("ioi-circuit", "A pruned circuit is sufficient under mean ablation; random ones of its size are not.",
         "circuits recover most of the metric; random circuits do not (Conmy et al. 2023)",
         (("circuit", Circuit(task="ioi", n=16, max_examples=6, method="acdc-nodes", threshold=0.05, n_random=3)),),
         lambda s: s["test_sufficiency"] - s["test_random_sufficiency_mean"],
         "sufficiency on held-out examples minus that of random circuits of its size", 0.4, 0.15,
         control=lambda s: (f"held out ({s.get('test_examples')} examples): random circuits' sufficiency "
                            f"{_num(s.get('test_random_sufficiency_mean'))}, ours {_num(s.get('test_sufficiency'))}; "
                            f"necessity {_num(s.get('test_necessity'))} vs random {_num(s.get('test_random_necessity_mean'))}"),
         smoke={"circuit": {"pairs": "{stop}/pairs.jsonl", "only_correct": False, "max_examples": 2, "n_random": 1}},
         smoke_files={"pairs.jsonl": _PAIRS}),
    Stop("lre", "Relation decoding is often linear: subject state x W + b gives the object.",
         "48% of relations linear for GPT-J (Hernandez et al. 2024)",
         (("lre", LRE(relations=("word_plural", "country_capital"), layers=(8,), n_prompts=2)),),
         lambda s: s["linear_fraction"], "share of relations with faithfulness >= 0.6", 0.35, 0.15,
         smoke={"lre": {"relations": ("country_capital",), "layers": (1,), "n_prompts": 1, "n_icl": 1}}),
    Stop("neurons-ablate", "Ablating a single neuron rarely changes the output.",
         "single neurons rarely matter alone (seed lecture on neuron analysis)",
         (("ablate", NeuronsAblate(layer=19, neurons=(1467,), windows=4, controls=2)),),
         lambda s: s["mean_top1_change"], "share of top-1 predictions changed by mean ablation", 0.05, 0.15,
         lower_is_better=True,
         control=lambda s: f"random neurons: top-1 change {_num(s.get('mean_top1_change_control'))}",
         smoke={"ablate": {"layer": 1, "neurons": (0,), "windows": 2, "controls": 1, "seq_len": 32}}),
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


def _run_fresh(exp: Experiment, model: Any, folder: Path, ctx: Context) -> Result:
    """Run ``exp`` into ``folder``, resuming its own checkpoint; a checkpoint of other work (a stop whose settings
    changed) is moved aside to ``<step>.stale-N`` (kept, never mixed in) and the step starts over."""
    try:
        return run(exp, model=model, out=folder, quiet=ctx.quiet)
    except StaleResume as exc:
        n = 1
        while folder.with_name(f"{folder.name}.stale-{n}").exists():
            n += 1
        aside = folder.rename(folder.with_name(f"{folder.name}.stale-{n}"))
        ctx.log(f"{folder} held other work ({str(exc).split(':', 1)[-1].strip()[:120]}): moved to {aside.name}")
        return run(exp, model=model, out=folder, quiet=ctx.quiet)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_report(title: str, data: Mapping[str, Mapping[str, Any]]) -> str:
    """The report as a Markdown table (what ``docs/reproduce.md`` quotes)."""
    lines = [f"# {title}", "",
             "| stop | seed finding | paper | ours | control | verdict | result (identity) |", "|---|---|---|---|---|---|---|"]
    for name, d in data.items():
        ours = f"{_num(d['value'])} ({d['what']})" if d.get("value") is not None else ""
        where = f"`{d['folder']}` ({d['identity'][:16]})" if d.get("identity") else ""
        lines.append("| " + " | ".join(_cell(x) for x in (name, d["finding"], d["paper"], ours, d.get("control", ""),
                                                          d["verdict"], where)) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Reproduce(Experiment):
    """Every seed finding measured on one model: ours, the paper's, the control and a computed verdict (resumable)."""

    command = "reproduce"
    about = "measure every seed finding into one report: ours, the paper's number, the control, a verdict (resumable)"
    only: tuple[str, ...] = param((), "stop names to run (default all)")
    size: str = param("full", "full: the documented numbers (bundled model); smoke: tiny settings, mechanics only",
                      choices=SIZES)
    list: bool = param(False, "list the stops and exit")

    def needs(self) -> dict[str, str]:
        return {k: v for s in self._stops() for _, e in s.steps for k, v in e.needs().items()}

    def check(self) -> None:
        unknown = sorted(set(self.only) - {s.name for s in STOPS})
        if unknown:
            raise ValueError(f"unknown stop(s) {unknown}; stops: {[s.name for s in STOPS]}")

    def _stops(self) -> list[Stop]:
        return [s for s in STOPS if not self.only or s.name in self.only]

    def run(self, model: Any, ctx: Context) -> Result:
        page = Result(f"lmscope reproduce on {model.model_id} ({self.size})")
        if self.list:
            for s in STOPS:
                page.say(f"{s.name:16s} {s.finding}")
            return page
        if self.size == "full" and model.model_id.startswith("tiny-"):
            raise ValueError("a tiny random model has no findings to reproduce at full size: use --size smoke (mechanics)")
        root = ctx.folder()
        rows, data = [], {}
        for stop in self._stops():
            entry: dict[str, Any] = {"finding": stop.finding, "paper": stop.paper, "what": stop.what}
            if self.size == "smoke" and stop.smoke is None:
                entry |= {"value": None, "verdict": f"skipped: {stop.no_smoke}", "status": "skipped"}
                data[stop.name] = entry
                rows.append([stop.name, html.escape(stop.finding), html.escape(stop.paper), "", "", entry["verdict"], ""])
                page.say(f"{stop.name:16s} {entry['verdict']}")
                continue
            summary, status, ident = {}, "done earlier", ""
            for name, content in (stop.smoke_files.items() if self.size == "smoke" else ()):
                (root / stop.name).mkdir(parents=True, exist_ok=True)
                (root / stop.name / name).write_text(content)
            for step, exp in stop.plan(self.size):
                folder = root / stop.name / step
                exp = _resolve(exp, root / stop.name)
                saved = _done(exp, model, folder)
                if saved is None:
                    ctx.log(f"{stop.name}/{step}: {exp.command}")
                    res = _run_fresh(exp, model, folder, ctx)
                    summary, status, ident = res.summary, "ran", res.identity["digest"]
                else:
                    summary, ident = saved["summary"], saved["identity"]["digest"]
            value = stop.measure(summary)
            last = stop.steps[-1][0]
            entry |= {"value": value, "verdict": stop.verdict(value), "status": status, "identity": ident,
                      "control": stop.control(summary) if stop.control else "", "folder": f"{stop.name}/{last}"}  # fmt: skip
            data[stop.name] = entry
            link = f"<a href='{stop.name}/{last}/index.html'>{stop.name}</a>"
            rows.append([link, html.escape(stop.finding), html.escape(stop.paper),
                         html.escape(f"{_num(value)} ({stop.what})"), html.escape(entry["control"]), entry["verdict"],
                         status])  # fmt: skip
            page.say(f"{stop.name:16s} {entry['verdict']:18s} {_num(value)} = {stop.what}")
        header = ["stop", "finding", "paper", "measured", "control", "verdict", "run"]
        page.sections.append(("Seed findings", html_table(header, rows, raw=True)))
        title = f"lmscope reproduce: {model.model_id}, size {self.size}"
        (root / "report.md").write_text(markdown_report(title, data))
        page.summary = {name: d["verdict"] for name, d in data.items()}
        page.data = data
        return page
