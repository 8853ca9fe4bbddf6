"""The introspection family's experiment: concept injection (does the model notice?) and its Golden-Gate control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmscope.experiments import Context, Experiment, Layers, Result, Strengths, param


@dataclass(frozen=True)
class Introspect(Experiment):
    """Inject concept vectors and ask the model whether it notices an injected thought (Lindsey 2025); resumable.

    lmscope introspect --layers 6,10,14,18 --strength 2 4 8 --trials 8
    lmscope introspect --read word --golden-gate --layers 6,10 --strength 0.25 0.5 1
    """

    command = "introspect"
    about = "inject concept vectors and ask the model whether it notices (resumable grid)"
    layers: Layers = param((6, 10, 14, 18), "injection layers")
    strength: Strengths = param((2.0, 4.0, 8.0), "injection strengths")
    concepts: tuple[str, ...] | None = param(None, "concept words (default: the built-in list)")
    n_concepts: int = param(8, "concepts drawn from the built-in list")
    n_baseline: int = param(40, "baseline words the concept vectors are measured against")
    baseline: str | None = param(None, "your baseline words instead: a text file, one word per line", metavar="FILE")
    trials: int = param(8, "injection trials per cell (plus as many controls)")
    read: str = param("last", "read concept vectors at the last token or at the word", choices=("last", "word"))
    inject_from: str = param("trial", "where injection starts", choices=("trial", "assistant", "generated"))
    max_new_tokens: int = param(32, "tokens generated per answer")
    greedy: bool = param(False, "greedy decoding (default: sampling at --temperature)")
    temperature: float = param(1.0, "sampling temperature")
    seed: int = param(0, "sampling and concept-draw seed")
    golden_gate: bool = param(False, "also run the plain-generation positive control")
    judge: str | None = param(None, "grade answers with this chat model as judge (a name or local folder lmscope.load "
                              "reads) instead of keywords", metavar="MODEL")  # fmt: skip

    def _baseline(self) -> list[str] | None:
        if self.baseline is None:
            return None
        from pathlib import Path

        path = Path(self.baseline)
        if not path.is_file():
            raise FileNotFoundError(f"baseline word file {path} does not exist")
        words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
        if len(words) < 2:
            raise ValueError(f"{path} holds {len(words)} baseline word(s); the mean needs at least 2")
        return words

    def check(self) -> None:
        self._baseline()

    def inputs(self) -> Any:
        return self._baseline()

    def run(self, model: Any, ctx: Context) -> Result:
        import dataclasses

        from lmscope.introspection import (
            IntrospectionConfig,
            concept_vectors,
            golden_gate,
            introspection_grid,
            load_concepts,
            pick_concepts,
        )
        from lmscope.introspection.grid import dev_test_rates

        cfg = IntrospectionConfig(
            layers=list(self.layers or ()), strengths=list(self.strength),
            concepts=None if self.concepts is None else list(self.concepts), n_concepts=self.n_concepts,
            n_baseline=self.n_baseline, n_trials=self.trials, read=self.read, inject_from=self.inject_from,
            max_new_tokens=self.max_new_tokens, do_sample=not self.greedy, temperature=self.temperature, seed=self.seed,
            judge=self.judge,
        )  # fmt: skip
        out = ctx.folder()
        words = load_concepts()
        own = self._baseline()
        if own is not None:
            words = dataclasses.replace(words, baseline=own)
        concepts = pick_concepts(cfg, words)
        ctx.log(f"concept vectors for {concepts} at layers {cfg.layers}")
        vecs = concept_vectors(model, concepts, words.baseline[: cfg.n_baseline], layers=cfg.layers, read=cfg.read)
        log = None if ctx.quiet else ctx.log
        judge = None
        if self.judge is not None:
            from lmscope.core.loading import load
            from lmscope.introspection.judge import ModelJudge

            ctx.log(f"loading the judge {self.judge}")
            judge = ModelJudge(load(self.judge, device=str(model.device)))
        res = introspection_grid(model, cfg, words=words, vectors=vecs, checkpoint=out / "checkpoint.json", progress=log,
                                 judge=judge)  # fmt: skip
        page = res.report()
        best = max(res.rates.items(), key=lambda kv: kv[1]["identification"] - kv[1]["false_positive"])
        page.summary = {"cells": len(res.rates), "best_cell": list(best[0]), "best_detection": best[1]["detection"],
                        "best_identification": best[1]["identification"], "best_false_positive": best[1]["false_positive"],
                        "max_detection": max(r["detection"] for r in res.rates.values()),
                        "max_false_positive": max(r["false_positive"] for r in res.rates.values())}  # fmt: skip
        # the protocol: the cell is chosen on dev trials (half the concepts, half the controls), reported on the rest
        halves = dev_test_rates(res, concepts)

        def score(r: dict[str, float]) -> float:
            return r["identification"] - r["false_positive"] if r["n_injected"] and r["n_control"] else float("-inf")

        chosen = max(sorted(halves), key=lambda cell: score(halves[cell]["dev"]))
        dev, test = halves[chosen]["dev"], halves[chosen]["test"]
        page.summary |= {"chosen_cell": list(chosen), "dev_identification": dev["identification"],
                         "dev_false_positive": dev["false_positive"], "test_detection": test["detection"],
                         "test_identification": test["identification"], "test_false_positive": test["false_positive"],
                         "test_injected": test["n_injected"], "test_controls": test["n_control"]}  # fmt: skip
        page.say(f"cell chosen on dev trials: layer {chosen[0]} strength {chosen[1]} (dev identification "
                 f"{dev['identification']:.2f}, false positives {dev['false_positive']:.2f}); on held-out trials: "
                 f"detection {test['detection']:.2f}, identification {test['identification']:.2f}, false positives "
                 f"{test['false_positive']:.2f} ({test['n_injected']} injected, {test['n_control']} controls)")  # fmt: skip
        if judge is not None:
            both = [t for t in res.trials if "keyword_detected" in t]
            agree = sum(t["detected"] == t["keyword_detected"] for t in both) / len(both)
            page.summary["judge_keyword_agreement"] = agree
            page.say(f"the judge {self.judge} and the keyword grader agree on detection in {agree:.0%} of {len(both)} answers")
        for (layer, s), r in sorted(res.rates.items()):
            page.say(f"layer {layer:3d} strength {s:5.2f}: detection {r['detection']:.2f} identification "
                     f"{r['identification']:.2f} false positive {r['false_positive']:.2f}")  # fmt: skip
        if self.golden_gate:
            gg = golden_gate(model, vecs, words, layers=cfg.layers, strengths=cfg.strengths, max_new_tokens=self.max_new_tokens,
                             progress=log)  # fmt: skip
            page.table("Golden-Gate control: concept mention rate answering 'Tell me about your day.'",
                       ["layer", "strength", "mention", "baseline"],
                       [[r["layer"], r["strength"], r["mention_rate"], r["baseline_mention_rate"]] for r in gg.rows])  # fmt: skip
            step = max(1, len(gg.samples) // 40)
            page.table("Golden-Gate samples", ["layer", "strength", "concept", "text"],
                       [[s["layer"], s["strength"], s["concept"], s["text"][:160]] for s in gg.samples[::step]])  # fmt: skip
            page.data["golden_gate"] = {"rows": gg.rows, "baseline": gg.baseline_mention, "samples": gg.samples}
            page.summary["golden_gate_max_mention"] = max(r["mention_rate"] for r in gg.rows)
            page.summary["golden_gate_baseline"] = gg.baseline_mention
            for r in gg.rows:
                page.say(f"golden gate layer {r['layer']} strength {r['strength']}: mention {r['mention_rate']:.2f} "
                         f"(baseline {r['baseline_mention_rate']:.2f})")  # fmt: skip
        return page
