"""The relations family's experiment: linear relational embeddings per relation and layer, faithfulness and editing."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from lmscope.experiments import Context, Experiment, Layers, Result, new_figure, param, resolve_layers


@dataclass(frozen=True)
class LRE(Experiment):
    """Linear relational embeddings (Hernandez et al. 2024): faithfulness and causality per relation and layer.

    lmscope lre --relations country_capital,fruit_color --layers 4,8,12
    """

    command = "lre"
    about = "linear relational embeddings: faithfulness and causality per relation and layer"
    relations: tuple[str, ...] = param(("all",), "built-in relations or relation JSONL files ('all': every built-in)")
    layers: Layers = param((8,), "layers of the subject state")
    n_prompts: int = param(3, "training prompts whose Jacobians are averaged")
    n_icl: int = param(3, "few-shot examples in each prompt")
    rank: int = param(64, "rank of the pseudo-inverse used for editing")
    linear_threshold: float = param(0.6, "faithfulness at or above which a relation counts as linear")
    save_lres: bool = param(False, "also save each LRE as a .safetensors artifact")

    def names(self) -> list[str]:
        from lmscope.relations import relation_names

        return relation_names() if self.relations == ("all",) else list(self.relations)

    def check(self) -> None:
        from lmscope.relations import load_relation

        for name in self.names():
            load_relation(name)

    def inputs(self) -> Any:
        from lmscope.relations import load_relation

        return {n: [(r := load_relation(n)).template, r.train, r.test] for n in self.names()}

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.experiments.artifacts import Provenance
        from lmscope.relations import Prompting, causality, choose_beta, estimate_lre, faithfulness, load_relation
        from lmscope.relations.evaluate import TooFewSubjects

        names = self.names()
        layers = resolve_layers(self.layers, model.shape.n_layers)
        prompting = Prompting(n_icl=self.n_icl)
        rows: list[dict[str, Any]] = []
        for name, layer in ctx.progress([(n, la) for n in names for la in layers], "relation x layer"):
            rel = load_relation(name)
            t0 = time.perf_counter()
            lre = estimate_lre(model, rel, layer, n_prompts=self.n_prompts, prompting=prompting)
            beta = choose_beta(model, rel, lre, prompting=prompting)
            dev = [t for t in rel.train if t[0] not in lre.subjects]  # train subjects the estimate never read
            fd = faithfulness(model, rel, lre, pairs=dev, prompting=prompting) if dev else None
            f = faithfulness(model, rel, lre, prompting=prompting)
            try:
                c = causality(model, rel, lre, rank=self.rank, prompting=prompting)
                caus, base, n_edit, skipped = c.success, c.baseline_substitute, c.n, ""
            except TooFewSubjects as exc:  # recorded with its reason, never a bare NaN
                caus, base, n_edit, skipped = float("nan"), float("nan"), 0, str(exc)
            rows.append({"relation": name, "layer": layer, "beta": beta, "faithfulness": f.faithfulness,
                         "dev_faithfulness": float("nan") if fd is None else fd.faithfulness,
                         "faithfulness_all": f.faithfulness_all, "model_accuracy": f.model_accuracy, "n_test": f.n,
                         "causality": caus, "substitute_baseline": base, "n_edit": n_edit, "causality_skipped": skipped,
                         "seconds": time.perf_counter() - t0})  # fmt: skip
            if self.save_lres:
                prov = Provenance.of(model, layer=layer, dataset=rel.train)
                lre.save(ctx.folder() / f"lre_{name}_L{layer}.safetensors", provenance=prov)
        def score(x: float) -> float:
            return -1.0 if math.isnan(x) else x

        best: dict[str, dict[str, Any]] = {}  # the layer is chosen on dev subjects; its test faithfulness is reported
        for name in names:
            pick = max((r for r in rows if r["relation"] == name), key=lambda r: score(r["dev_faithfulness"]))
            best[name] = {**pick, "faithfulness": score(pick["faithfulness"])}
        linear = {k: v["faithfulness"] >= self.linear_threshold for k, v in best.items()}
        frac = sum(linear.values()) / max(1, len(linear))
        page = Result("Linear relational embeddings", summary={"relations": len(linear), "linear": sum(linear.values()),
                                                                "linear_fraction": frac})  # fmt: skip
        page.say(f"{sum(linear.values())} of {len(linear)} relations ({frac:.0%}) have an LRE with faithfulness >= "
                 f"{self.linear_threshold} on test subjects at the layer chosen on dev subjects (Hernandez et al. 2024 report "
                 "about 48% for GPT-J)")  # fmt: skip
        page.table("Relations at the layer chosen on dev subjects (test faithfulness)", ["relation", "layer",
                   "faithfulness (test)", "dev", "model accuracy", "causality", "substitute baseline", "beta", "linear?"],
                   [[k, v["layer"], v["faithfulness"], v["dev_faithfulness"], v["model_accuracy"], v["causality"],
                     v["substitute_baseline"], v["beta"], "yes" if linear[k] else "no"] for k, v in best.items()])  # fmt: skip
        page.table("Every relation and layer", list(rows[0].keys()), [list(r.values()) for r in rows])
        if len(layers) > 1:
            import numpy as np

            grid = np.array([[next(r["faithfulness"] for r in rows if r["relation"] == n and r["layer"] == la)
                              for la in layers] for n in names])  # fmt: skip
            fig, ax = new_figure(figsize=(1.2 * len(layers) + 3, 0.4 * len(names) + 1.5))
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(layers)), [str(x) for x in layers])
            ax.set_yticks(range(len(names)), names)
            ax.set_xlabel("layer")
            fig.colorbar(im, ax=ax, label="faithfulness")
            page.figure("faithfulness", fig, "LRE faithfulness by relation and layer")
        page.data = {"rows": rows, "best": best, "linear": linear}
        return page
