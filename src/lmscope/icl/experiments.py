"""The in-context learning family's experiments: task/function vectors, vector algebra, the rank-1 update, trajectories."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmscope.experiments import Context, Experiment, Layers, Result, param

DEFAULT_TASKS = ("antonyms", "country_capital", "singular_plural", "present_past", "lower_upper", "country_language",
                 "city_country", "word_first_letter")  # fmt: skip
FORMATS = ("qa", "arrow", "colon")


def _check_tasks(names: tuple[str, ...]) -> None:
    from lmscope.icl.tasks import load_task

    if not names:
        raise ValueError("--tasks is empty: name built-in tasks or give paths to your own task JSONL files")
    for name in names:
        load_task(name)  # a missing or malformed task file is refused here, before the model loads


def _tasks_data(names: tuple[str, ...]) -> Any:
    from lmscope.icl.tasks import load_task

    return {n: [(p.input, p.output, p.split) for p in load_task(n).pairs] for n in names}


@dataclass(frozen=True)
class ICLVectors(Experiment):
    """Zero-shot, few-shot and vector-injected accuracy per layer for each task (task vectors, function vectors, ICV).

    lmscope icl vectors --tasks antonyms,country_capital --layers 0-27:3
    """

    command = "icl vectors"
    about = "zero-shot / ICL / vector-injected accuracy per layer for each task"
    tasks: tuple[str, ...] = param(DEFAULT_TASKS, "task names or task JSONL files")
    layers: Layers = param(None, "injection layers (default: every third)")
    k: int = param(5, "demonstrations per prompt")
    n: int = param(30, "held-out test queries per task (and at most as many dev queries, drawn from train pairs)")
    fv_tasks: int = param(3, "tasks used to rank heads for function vectors (0: skip)")
    fv_heads: int = param(10, "heads summed into a function vector")
    format: str = param("qa", "prompt format", choices=FORMATS)
    seed: int = param(0, "demonstration draw")

    def check(self) -> None:
        _check_tasks(self.tasks)

    def inputs(self) -> Any:
        return _tasks_data(self.tasks)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.experiments import resolve_layers
        from lmscope.icl.vectors_report import vectors_report

        layers = resolve_layers(self.layers, model.shape.n_layers, default=range(0, model.shape.n_layers, 3))
        page = vectors_report(model, list(self.tasks), fmt=self.format, layers=layers, k=self.k, n=self.n,
                              fv_tasks=self.fv_tasks, fv_heads=self.fv_heads, seed=self.seed,
                              progress=None if ctx.quiet else ctx.log)  # fmt: skip
        summ = page.data["summary"]
        page.summary = {f"{t}_{key}": r[key] for t, r in summ.items()
                        for key in ("zero_shot", "icl", "best_acc", "best_dev_acc", "control")}  # fmt: skip
        for name, r in summ.items():
            page.say(f"{name:20s} zero-shot {r['zero_shot']:.2f}  ICL {r['icl']:.2f}  best vector on dev: {r['best_method']} "
                     f"at layer {r['best_layer']} (dev {r['best_dev_acc']:.2f}), test {r['best_acc']:.2f}, equal-norm "
                     f"random vector there {r['control']:.2f}")  # fmt: skip
        return page


@dataclass(frozen=True)
class ICLAlgebra(Experiment):
    """The composition benchmark: v(f(first)) + v(last) - v(first) makes the model answer f(last)."""

    command = "icl algebra"
    about = "vector algebra: capital(last) = capital(first) + last - first"
    layers: Layers = param(None, "injection layers (default: every third)")
    k: int = param(5, "demonstrations per prompt")
    n: int = param(24, "held-out lists")
    item_task: str = param("country_capital", "task applied to the first/last item (f)")
    format: str = param("qa", "prompt format", choices=FORMATS)
    seed: int = param(0, "demonstration draw")

    def check(self) -> None:
        _check_tasks((self.item_task,))

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.experiments import resolve_layers
        from lmscope.icl.algebra import algebra_report

        layers = resolve_layers(self.layers, model.shape.n_layers, default=range(0, model.shape.n_layers, 3))
        page = algebra_report(model, fmt=self.format, layers=layers, k=self.k, n=self.n, seed=self.seed,
                              item_task=self.item_task)  # fmt: skip
        page.summary = {"best_layer": page.data["best_layer"], **page.data["best"]}
        page.say(f"best layer {page.data['best_layer']}: " + ", ".join(f"{k} {v:.2f}" for k, v in page.data["best"].items()))
        return page


@dataclass(frozen=True)
class ICLRank1(Experiment):
    """In-context learning as an implicit rank-1 update of the MLP weights (Dherin et al. 2025), checked layer by layer."""

    command = "icl rank1"
    about = "per-layer rank-1 identity, whole-model absorption KL, transfer"
    tasks: tuple[str, ...] = param(("antonyms", "singular_plural", "country_capital", "present_past"), "tasks")
    k: int = param(5, "demonstrations per context")
    queries: int = param(5, "absorption queries per task")
    sources: int = param(2, "source queries per task for transfer")
    targets: int = param(20, "target queries per task for transfer")
    transfer: bool = param(True, "run the transfer experiment")
    format: str = param("qa", "prompt format", choices=FORMATS)
    seed: int = param(0, "demonstration draw")

    def check(self) -> None:
        _check_tasks(self.tasks)

    def inputs(self) -> Any:
        return _tasks_data(self.tasks)

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.icl.implicit_report import rank1_report

        page = rank1_report(model, list(self.tasks), fmt=self.format, k=self.k, n_queries=self.queries,
                            n_sources=self.sources, n_targets=self.targets, seed=self.seed,
                            do_transfer=self.transfer, progress=None if ctx.quiet else ctx.log)  # fmt: skip
        errs = [c["rel_err_fp32"] for c in page.data["identity"]]
        kls = [r["kl_absorbed_both"] for r in page.data["absorption"] if "kl_absorbed_both" in r]
        page.summary = {"max_rel_err_fp32": max(errs), "layers": len(errs), "max_absorption_kl": max(kls) if kls else None,
                        "min_rel_err_no_update": min(c["rel_err_no_update"] for c in page.data["identity"])}  # fmt: skip
        page.say(f"identity: max fp32 relative error {max(errs):.2e} over {len(errs)} layers")
        if kls:
            page.say(f"absorption: max KL {max(kls):.2e} nats over {len(kls)} queries")
        return page


@dataclass(frozen=True)
class ICLTrajectory(Experiment):
    """Token-by-token implicit updates along a k-shot context, and the takeaway experiments."""

    command = "icl trajectory"
    about = "token-by-token implicit updates and the takeaway experiments"
    task: str = param("antonyms", "task name or task JSONL file")
    k: int = param(8, "demonstrations in the context")
    n: int = param(20, "held-out queries per takeaway condition")
    layers: Layers = param(None, "layers (default all)")
    takeaways: tuple[str, ...] = param((), "tasks for the takeaway experiments")
    format: str = param("qa", "prompt format", choices=FORMATS)
    seed: int = param(0, "demonstration draw")

    def check(self) -> None:
        _check_tasks((self.task, *self.takeaways))

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.icl.implicit_report import trajectory_report

        layers = None if self.layers is None else list(self.layers)
        page = trajectory_report(model, self.task, fmt=self.format, k=self.k, n_queries=self.n, seed=self.seed,
                                 takeaway_tasks=list(self.takeaways), layers=layers,
                                 progress=None if ctx.quiet else ctx.log)  # fmt: skip
        conv = sorted(page.data["trajectory"]["convergence_last_over_first_quarter"])
        page.summary = {"median_step_ratio": conv[len(conv) // 2]}
        page.say(f"median step ratio (last/first quarter of the context): {conv[len(conv) // 2]:.3f}")
        return page
