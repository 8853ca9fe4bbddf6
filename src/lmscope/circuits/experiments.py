"""The circuits family's experiments: activation patching, attribution patching, circuit discovery by pruning.

Each builds a task (IOI, greater-than or capital recall), keeps the examples the model gets right
and uses the first ``max_examples`` of them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from lmscope.experiments import Context, Experiment, Result, new_figure, param

VARIANTS = ("resid", "layers", "heads", "head_pos")
TASK_NAMES = ("ioi", "greater_than", "capital")


@dataclass(frozen=True)
class _TaskExperiment(Experiment):
    task: str = param("ioi", "built-in task", choices=TASK_NAMES)
    pairs: str | None = param(None, 'your clean/corrupt pairs instead: JSONL of {"clean", "corrupt", "answer", "wrong"}',
                              metavar="FILE")  # fmt: skip
    n: int = param(40, "examples generated before filtering")
    max_examples: int = param(8, "examples used after keeping the ones the model gets right")
    seed: int = param(0, "task generation seed")
    copies: int = param(16, "patches (or masks) per batched forward")
    only_correct: bool = param(True, "keep only the examples the model gets right")

    def check(self) -> None:
        if self.pairs:
            from lmscope.data.bundled import read_jsonl

            if not read_jsonl(self.pairs):
                raise ValueError(f"pairs file {self.pairs} holds no records")

    def inputs(self) -> Any:
        if self.pairs:
            from lmscope.data.bundled import read_jsonl

            return read_jsonl(self.pairs)
        return None

    def setup(self, model: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        sub, _, info = self.split(model, ctx)
        return sub, info

    def split(self, model: Any, ctx: Context) -> tuple[Any, Any, dict[str, Any]]:
        """The examples used (the first ``max_examples`` kept) and the held-out ones after them (up to as many;
        None when none are left), with what the task and the filter gave."""
        from lmscope.circuits import TASKS, filter_correct
        from lmscope.circuits.tasks import pairs_task

        task = pairs_task(model, self.pairs) if self.pairs else TASKS[self.task](model, n=self.n, seed=self.seed)
        kept = filter_correct(model, task, only_correct=self.only_correct)
        info = {"task": task.name, "generated": task.n, "accuracy": kept.accuracy, "kept": kept.task.n,
                "clean_metric": kept.clean_metric, "corrupt_metric": kept.corrupt_metric, "metric": task.kind}  # fmt: skip
        sub = kept.task.subset(range(min(self.max_examples, kept.task.n)))
        info["used"] = sub.n
        info["example_clean"], info["example_corrupt"] = sub.clean[0], sub.corrupt[0]
        rest = range(sub.n, min(2 * sub.n, kept.task.n))
        held = kept.task.subset(rest) if len(rest) else None
        info["held_out"] = 0 if held is None else held.n
        ctx.log(f"{task.name}: model right on {kept.accuracy:.0%} of {task.n}; using {sub.n} examples, "
                f"{info['held_out']} held out")  # fmt: skip
        return sub, held, info


def _grid(model: Any, task: Any, variant: str, **kw: Any) -> Any:
    from lmscope.circuits import patching as P

    fn = {"resid": P.resid_by_layer_pos, "layers": P.layer_outputs, "heads": P.heads, "head_pos": P.head_by_pos}[variant]
    return fn(model, task, **kw)


@dataclass(frozen=True)
class Patch(_TaskExperiment):
    """Activation patching sweeps with heatmaps (1 = the clean behaviour restored).

    lmscope patch --task ioi --n 40 --max-examples 8 --variants resid,layers,heads
    """

    command = "patch"
    about = "activation patching sweeps with heatmaps"
    variants: tuple[str, ...] = param(("resid", "layers", "heads"), "what to patch", choices=VARIANTS)
    direction: str = param("denoise", "patch clean into corrupt (denoise) or corrupt into clean (noise)",
                           choices=("denoise", "noise"))  # fmt: skip

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.circuits import heatmap

        task, info = self.setup(model, ctx)
        page = Result(f"Activation patching: {info['task']}")
        page.table("Task", ["key", "value"], [[k, v] for k, v in info.items()])
        page.data = {"task": info, "sweeps": {}}
        for v in ctx.progress(self.variants, "variants"):
            grid = _grid(model, task, v, copies=self.copies, direction=self.direction)
            r = grid.result
            page.data["sweeps"][v] = {"values": grid.values.tolist(), "rows": grid.rows, "cols": grid.cols,
                                      "seconds": r.seconds, "forwards": r.forwards, "clean": r.clean,
                                      "corrupt": r.corrupt}  # fmt: skip
            flat = grid.values.flatten()
            top = flat.abs().topk(min(5, grid.values.numel())).indices.tolist()
            nc = grid.values.shape[1]
            page.table(f"{grid.title}: strongest cells", ["row", "col", "normalised"],
                       [[grid.rows[i // nc], grid.cols[i % nc], float(flat[i])] for i in top])  # fmt: skip
            page.figure(f"patch_{v}", heatmap(grid), f"{grid.title} ({self.direction}; 1 = clean behaviour restored)")
            i = top[0]
            if v == "resid":  # the clean answer restored by the final position's state at the last layer
                page.summary["resid_last_layer_final_position"] = float(grid.values[-1, -1])
            page.summary[f"{v}_strongest"] = f"{grid.rows[i // nc]} / {grid.cols[i % nc]}: {float(flat[i]):.3f}"
            page.say(f"{v}: {len(r.specs)} patches in {r.forwards} forwards ({r.seconds:.1f} s); strongest "
                     f"{grid.rows[i // nc]} / {grid.cols[i % nc]} = {float(flat[i]):.3f}")  # fmt: skip
        return page


@dataclass(frozen=True)
class Attribute(_TaskExperiment):
    """Attribution patching (nodes and edges) checked against activation patching and exact edge patching."""

    command = "attribute"
    about = "attribution patching (nodes and edges) vs activation patching"
    variants: tuple[str, ...] = param(("layers", "heads"), "node sweeps to compare", choices=VARIANTS)
    exact_edges: int = param(32, "edges patched exactly to check edge attribution (half top, half random)")

    def run(self, model: Any, ctx: Context) -> Result:
        import torch

        from lmscope.circuits import correlation, edge_attribution, edge_patch_exact, heatmap, node_attribution
        from lmscope.circuits.patching import PatchGrid

        task, info = self.setup(model, ctx)
        clean, corrupt = task.batches(model)
        page = Result(f"Attribution patching: {info['task']}")
        data: dict[str, Any] = {"task": info, "nodes": {}}
        for v in ctx.progress(self.variants, "variants"):
            grid = _grid(model, task, v, copies=self.copies)
            t0 = time.perf_counter()
            attr = node_attribution(model, clean, corrupt, grid.result.specs, task.metric, logits_to_keep=1)
            corr = correlation(attr.normalized, grid.result.normalized)
            data["nodes"][v] = {"correlation": corr, "attribution": attr.normalized.tolist(),
                                "patching": grid.values.flatten().tolist(), "seconds_attribution": time.perf_counter() - t0,
                                "seconds_patching": grid.result.seconds}  # fmt: skip
            page.summary[f"{v}_correlation"] = corr
            page.say(f"{v}: attribution vs activation patching r = {corr:.3f}")
            agrid = PatchGrid(attr.normalized.reshape(grid.values.shape), grid.rows, grid.cols, attr,
                              f"attribution: {grid.title}")  # fmt: skip
            page.figure(f"attr_{v}", heatmap(agrid),
                        f"attribution patching, {grid.title} (r = {corr:.3f} with activation patching)")  # fmt: skip
        eap = edge_attribution(model, task)
        g = eap.graph
        valid = g.valid()
        k = max(2, self.exact_edges)
        flat = eap.scores.nan_to_num(0).abs().flatten()
        top = flat.topk(k // 2).indices.tolist()
        pool = [i for i in valid.flatten().nonzero().flatten().tolist() if i not in set(top)]
        rnd = random.Random(self.seed).sample(pool, min(len(pool), k - len(top)))
        edges = [(i // g.n_readers, i % g.n_readers) for i in top + rnd]
        exact = edge_patch_exact(model, task, edges, copies=self.copies)
        est = torch.stack([eap.scores[w, r] for w, r in edges])
        data["edges"] = {"n_edges": int(valid.sum()), "top": eap.top(20), "checked": len(edges),
                         "correlation": correlation(est, exact),
                         "correlation_top": correlation(est[: len(top)], exact[: len(top)]),
                         "correlation_random": correlation(est[len(top):], exact[len(top):]),
                         "pairs": [[g.writers[w], g.readers[r], float(a), float(b)]
                                   for (w, r), a, b in zip(edges, est, exact, strict=True)]}  # fmt: skip
        page.summary["edge_correlation"] = data["edges"]["correlation"]
        page.say(f"edges: EAP vs exact edge patching r = {data['edges']['correlation']:.3f} on {len(edges)} edges")
        fig, ax = new_figure(figsize=(5, 5))
        ax.scatter(exact.numpy(), est.numpy(), s=10)
        ax.set_xlabel("exact edge patch (metric change)")
        ax.set_ylabel("edge attribution estimate")
        page.figure("eap_vs_exact", fig, f"edge attribution vs exact edge patching (r = {data['edges']['correlation']:.3f})")
        page.table("Top edges by attribution", ["writer", "reader", "normalised score"], [list(t) for t in eap.top(20)])
        page.table("Task", ["key", "value"], [[k2, v2] for k2, v2 in info.items()])
        page.data = data
        return page


@dataclass(frozen=True)
class Circuit(_TaskExperiment):
    """Circuit discovery by pruning (ACDC or learned masks), then necessity and sufficiency beside random circuits, on
    the examples it was found on and on held-out examples after them.

    lmscope circuit --task ioi --method acdc-nodes --ablation mean --threshold 0.05
    """

    command = "circuit"
    about = "circuit discovery by pruning, with necessity and sufficiency"
    method: str = param("acdc-nodes", "discovery method", choices=("acdc-nodes", "acdc-edges", "mask-nodes", "mask-edges"))
    ablation: str = param("mean", "how removed parts are ablated", choices=("mean", "zero", "resample", "corrupt"))
    threshold: float = param(0.02, "ACDC: normalised metric change below which a node/edge goes")
    candidates: int = param(200, "acdc-edges: search only the top edges by edge attribution")
    edge_candidates: str = param("attribution", "acdc-edges: the edges searched: the top --candidates by edge attribution, "
                                 "or every edge between the nodes of an ACDC node circuit found first (same threshold)",
                                 choices=("attribution", "nodes"))  # fmt: skip
    sparsity: float = param(0.1, "learned masks: L1 weight")
    steps: int = param(40, "learned masks: optimisation steps")
    n_random: int = param(10, "random circuits of the same size as controls")
    sequential: bool = param(False, "ACDC as published: one candidate at a time against the circuit left so far "
                             "(one forward each; default: a reader's candidates batched and cut together)")  # fmt: skip

    def run(self, model: Any, ctx: Context) -> Result:
        import torch

        from lmscope.circuits import acdc, edge_attribution, faithfulness_curve, learned_mask, necessity_sufficiency, setup
        from lmscope.experiments.artifacts import Provenance

        task, held, info = self.split(model, ctx)
        s = setup(model, task, ablation=self.ablation, seed=self.seed)
        t0 = time.perf_counter()
        level = "edges" if self.method.endswith("edges") else "nodes"
        log = None if ctx.quiet else ctx.callback(self.method)
        if self.method == "acdc-nodes":
            circ = acdc(model, task, level="nodes", threshold=self.threshold, prepared=s, copies=self.copies, progress=log,
                        sequential=self.sequential)  # fmt: skip
        elif self.method == "acdc-edges":
            if self.edge_candidates == "nodes":
                nodes = acdc(model, task, level="nodes", threshold=self.threshold, prepared=s, copies=self.copies,
                             progress=log)  # fmt: skip
                cand = nodes.kept
                info["node_circuit"] = {"nodes": len(nodes.nodes), "edges": int(cand.sum()), "faithfulness": nodes.faithfulness}
            else:
                eap = edge_attribution(model, task)
                flat = eap.scores.abs().nan_to_num(0).flatten()
                top = torch.zeros(flat.numel(), dtype=torch.bool)
                top[flat.topk(min(self.candidates, int(s.valid.sum()))).indices] = True
                cand = top.reshape(s.valid.shape)
            circ = acdc(model, task, level="edges", threshold=self.threshold, prepared=s, copies=self.copies,
                        candidates=cand, progress=log, sequential=self.sequential)  # fmt: skip
        else:
            circ = learned_mask(model, task, level=level, sparsity=self.sparsity, steps=self.steps, prepared=s, progress=log)
        seconds = time.perf_counter() - t0
        summary = circ.summary()
        ns = necessity_sufficiency(model, task, circ, level=level, prepared=s, n_random=self.n_random, seed=self.seed)
        if level == "nodes":
            ranking = circ.scores.nan_to_num(-1.0).max(1).values
            total = s.graph.n_writers - 1
            points = sorted({0, 5, 10, 20, 40, 80, 160, total, len(circ.nodes)} & set(range(total + 1)))
        else:
            ranking = circ.scores.nan_to_num(-1.0) + circ.kept.float() * 10  # kept edges first
            total = int(s.valid.sum())
            points = sorted({0, 10, 30, 100, 300, 1000, total, int(circ.kept.sum())} & set(range(total + 1)))
        curve = faithfulness_curve(s, ranking, points, level=level)
        circ.save(ctx.folder() / "circuit.safetensors", provenance=Provenance.of(model, dataset=task.clean, method=self.method))
        nsj = ns.to_json()
        page = Result(f"Circuit discovery: {info['task']} ({self.method})")
        page.summary = {**summary, "seconds": seconds, "necessity": nsj["necessity"], "sufficiency": nsj["sufficiency"],
                        "random_necessity_mean": nsj["random_necessity_mean"],
                        "random_sufficiency_mean": nsj["random_sufficiency_mean"]}  # fmt: skip
        test = None
        if held is not None:  # the circuit found on the examples above, scored on examples it never saw
            s_held = setup(model, held, ablation=self.ablation, seed=self.seed)
            test = necessity_sufficiency(model, held, circ, level=level, prepared=s_held, n_random=self.n_random,
                                         seed=self.seed).to_json()  # fmt: skip
            page.summary |= {"test_examples": held.n, "test_necessity": test["necessity"],
                             "test_sufficiency": test["sufficiency"], "test_random_necessity_mean": test["random_necessity_mean"],
                             "test_random_sufficiency_mean": test["random_sufficiency_mean"]}  # fmt: skip
        page.artifacts["circuit"] = "circuit.safetensors"
        page.table("Task", ["key", "value"], [[k, v] for k, v in info.items()])
        page.table("Necessity / sufficiency (fractions of the clean metric)", ["", "circuit", "random mean", "random std"], [
            ["necessity (circuit ablated)", nsj["necessity"], nsj["random_necessity_mean"], nsj["random_necessity_std"]],
            ["sufficiency (rest ablated)", nsj["sufficiency"], nsj["random_sufficiency_mean"], nsj["random_sufficiency_std"]],
            ["everything ablated", nsj["ablated_all_fraction"], "", ""]])  # fmt: skip
        if test is not None:
            page.table(f"Held out: the same circuit on {held.n} examples not used to find it", ["", "circuit", "random mean",
                       "random std"], [
                ["necessity (circuit ablated)", test["necessity"], test["random_necessity_mean"], test["random_necessity_std"]],
                ["sufficiency (rest ablated)", test["sufficiency"], test["random_sufficiency_mean"],
                 test["random_sufficiency_std"]]])  # fmt: skip
        page.figure("circuit", circ.draw(), "the circuit (nodes: heads red, MLPs green; edges to readers)")
        fig, ax = new_figure(figsize=(5, 3.5))
        ax.plot(curve.kept, curve.faithfulness.numpy(), marker="o")
        ax.set_xscale("symlog")
        ax.set_xlabel(f"{level} kept (top by score)")
        ax.set_ylabel("metric recovered (normalised)")
        page.figure("faithfulness", fig, "faithfulness curve")
        page.text("Nodes", ", ".join(circ.nodes) or "(none)")
        page.data = {"task": info, "circuit": circ.to_json(), "necessity_sufficiency": nsj, "held_out": test,
                     "curve": {"kept": curve.kept, "faithfulness": curve.faithfulness.tolist(), "level": level}}  # fmt: skip
        page.say(f"circuit: {summary}")
        page.say(f"necessity {nsj['necessity']:.3f} (random {nsj['random_necessity_mean']:.3f}), sufficiency "
                 f"{nsj['sufficiency']:.3f} (random {nsj['random_sufficiency_mean']:.3f})")  # fmt: skip
        if test is not None:
            page.say(f"held out ({held.n} examples): necessity {test['necessity']:.3f} (random "
                     f"{test['random_necessity_mean']:.3f}), sufficiency {test['sufficiency']:.3f} (random "
                     f"{test['random_sufficiency_mean']:.3f})")  # fmt: skip
        return page
