"""Recipes that run the implicit-dynamics experiments end to end and write JSON, figures and HTML.

``rank1_report``: the per-layer rank-1 identity (fp32/fp64, with controls), whole-model absorption
KL per task, and transfer of absorbed updates between queries. ``trajectory_report``: the
token-by-token trajectory of one k-shot context and the takeaway experiments. Both back the
``lmscope icl rank1`` and ``lmscope icl trajectory`` commands.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmscope.core.model import Model
from lmscope.experiments.progress import Log
from lmscope.experiments.report import Result, new_figure
from lmscope.icl.rank1 import absorb_context, verify_rank1
from lmscope.icl.takeaways import takeaway_experiments, transfer
from lmscope.icl.tasks import FORMATS, load_task
from lmscope.icl.trajectory import demo_ends, trajectory


def _fmt_list(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


def _say(progress: Log | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def rank1_report(
    model: Model, tasks: Sequence[str], out: str | Path | None = None, *, fmt: str = "qa", k: int = 5, n_queries: int = 5,
    n_sources: int = 2, n_targets: int = 20, seed: int = 0, do_transfer: bool = True, progress: Log | None = None,
) -> Result:  # fmt: skip
    """Identity per layer, absorption KL per (task, query), transfer per task; written to ``out``."""
    f = FORMATS[fmt]
    rng = random.Random(seed)
    result: dict = {"model": model.model_id, "format": fmt, "k": k, "identity": [], "absorption": [], "transfer": {}}
    rep = Result(f"Implicit rank-1 update of in-context learning — {model.model_id}")
    first = load_task(tasks[0])
    demos = rng.sample(first.train, k)
    checks = verify_rank1(model, f.context(demos), f.ask(first.test[0].input))
    result["identity"] = [asdict(c) for c in checks]
    fig, ax = new_figure(figsize=(8, 4))
    layers = [c.layer for c in checks]
    for key, label in (("rel_err_fp32", "fp32"), ("rel_err_fp64", "fp64"), ("rel_err_no_update", "no update (W)"),
                       ("rel_err_perturbed", "perturbed dA (control)")):  # fmt: skip
        ax.semilogy(layers, [max(getattr(c, key), 1e-18) for c in checks], marker="o", ms=3, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("relative error of MLP output")
    ax.legend()
    ax.set_title(f"MLP_(W+dW)(A(x)) vs MLP_W(A(C,x)), task {first.name}, k={k}")
    rep.figure("rank1_identity", fig, "Per-layer identity: relative error of the MLP output")
    rep.table("Per-layer identity", ["layer", "fp32", "fp64", "no update", "perturbed", "||dW||", "h"],
              [[c.layer, c.rel_err_fp32, c.rel_err_fp64, c.rel_err_no_update, c.rel_err_perturbed, c.dw_norm, c.lr]
               for c in checks])  # fmt: skip
    _say(progress, f"identity checked on {len(checks)} layers")
    for name in tasks:
        task = load_task(name)
        _say(progress, f"absorption and transfer: {name}")
        for p in task.test[:n_queries]:
            ctx = f.context(rng.sample(task.train, k))
            row: dict[str, Any] = {"task": name, "query": p.input}
            for residual in (True, False):
                try:
                    ab = absorb_context(model, ctx, f.ask(p.input), residual=residual)
                except NotImplementedError as exc:  # this variant does not exist for the family: say so in the row
                    row[f"skipped_{'both' if residual else 'first_only'}"] = str(exc)
                    continue
                tag = "both" if residual else "first_only"
                row |= {
                    "kl_query_alone": ab.kl_query_alone,
                    f"kl_absorbed_{tag}": ab.kl_absorbed,
                    f"top1_match_{tag}": ab.top1_match,
                }
            result["absorption"].append(row)
        if do_transfer:
            control = load_task(tasks[1] if name == tasks[0] and len(tasks) > 1 else tasks[0])
            tr = transfer(model, task, f, control=control, k=k, n_sources=n_sources, n_targets=n_targets, seed=seed)
            result["transfer"][name] = asdict(tr) | {"control_task": control.name}
    rows = result["absorption"]
    rep.table("Whole-model absorption: KL(with context || query alone [+ updates]) at the next token, nats",
              ["task", "query", "KL alone", "KL both updates", "top-1 match", "KL first-matrix only", "top-1 match"],
              [[r["task"], r["query"], r["kl_query_alone"], r.get("kl_absorbed_both", "n/a"), r.get("top1_match_both", "n/a"),
                r.get("kl_absorbed_first_only"), r.get("top1_match_first_only")] for r in rows])  # fmt: skip
    if result["transfer"]:
        rep.table("Transfer: an update absorbed for one query, applied to other queries asked alone",
                  ["task", "acc alone", "acc ICL", "acc transfer", "acc transfer (first only)", "acc control",
                   "KL alone", "KL transfer", "KL first only", "KL control"],
                  [[t, r["acc_alone"], r["acc_icl"], r["acc_transfer"], r["acc_transfer_first_only"], r["acc_control"],
                    r["kl_alone"], r["kl_transfer"], r["kl_transfer_first_only"], r["kl_control"]]
                   for t, r in result["transfer"].items()])  # fmt: skip
    rep.data = result
    if out is not None:
        rep.write(out)
    return rep


def trajectory_report(
    model: Model, task_name: str, out: str | Path | None = None, *, fmt: str = "qa", k: int = 8, n_queries: int = 20,
    seed: int = 0, takeaway_tasks: Sequence[str] = (), layers: Sequence[int] | None = None, progress: Log | None = None,
) -> Result:  # fmt: skip
    """Token-by-token trajectory of a k-shot context at every layer, plus the takeaway experiments."""
    f = FORMATS[fmt]
    task = load_task(task_name)
    rng = random.Random(seed)
    demos = rng.sample(task.train, k)
    ids, ends = demo_ends(model, [f.demo(p) for p in demos], f.sep)
    tr = trajectory(model, ids, f.ask(task.test[0].input), layers, example_ends=ends)
    result: dict = {"model": model.model_id, "task": task_name, "format": fmt, "k": k, "trajectory": tr.to_json()}
    rep = Result(f"Token-by-token implicit updates — {model.model_id}, task {task_name}")
    fig, axes = new_figure(1, 4, figsize=(20, 4))
    show = sorted(set([tr.layers[0], tr.layers[len(tr.layers) // 3], tr.layers[2 * len(tr.layers) // 3], tr.layers[-1]]))
    for layer in show:
        j = tr.layers.index(layer)
        axes[0].plot(tr.dw_norm[j].tolist(), label=f"layer {layer}")
        axes[1].semilogy(tr.step_norm[j].clamp_min(1e-12).tolist(), label=f"layer {layer}")
        axes[2].plot(tr.cos_to_final[j].tolist(), label=f"layer {layer}")
        axes[3].plot(range(1, len(ends) + 1), tr.example_step_norm[j].tolist(), marker="o", label=f"layer {layer}")
    axes[3].set_title("per demonstration: ||dW_(end j) - dW_(end j-1)||_F")
    axes[3].set_xlabel("demonstration j")
    axes[3].legend(fontsize=7)
    for ax, title in zip(axes[:3], ("||dW_i||_F", "step ||W_{i+1} - W_i||_F", "cos(dW_i, dW_n)"), strict=True):
        for e in ends:
            ax.axvline(e, color="#ccc", lw=0.6)
        ax.set_xlabel("context tokens consumed (grey: end of a demonstration)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    rep.figure("trajectory", fig, "Implicit update along the context")
    conv = tr.convergence()
    rep.table("Per layer: learning rate h and convergence (mean step, last quarter / first quarter of the context)",
              ["layer", "h = 1/||A(x)||^2", "final ||dW||", "last/first quarter step", "per-demonstration steps"],
              [[layer, tr.lr[j], float(tr.dw_norm[j, -1]), conv[j], _fmt_list(tr.example_step_norm[j].tolist())]
               for j, layer in enumerate(tr.layers)])  # fmt: skip
    result["takeaways"] = {}
    _say(progress, "trajectory done")
    for name in takeaway_tasks:
        _say(progress, f"takeaways: {name}")
        exps = takeaway_experiments(model, load_task(name), f, k=k, n_queries=n_queries, seed=seed)
        result["takeaways"][name] = exps
        for exp, rows in exps.items():
            rep.table(f"{name}: {exp}", ["condition", "accuracy", "P(answer)", "sum_l ||dW_l||", "n"],
                      [[r["name"], r["accuracy"], r["target_prob"], r["dw_norm"], r["n"]] for r in rows])  # fmt: skip
    if takeaway_tasks:
        fig, ax = new_figure(figsize=(6, 4))
        for name in takeaway_tasks:
            rows = result["takeaways"][name]["length"]
            ax.plot([int(r["name"][2:]) for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
        ax.set_xlabel("demonstrations k")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("Context length")
        ax.legend(fontsize=7)
        rep.figure("length", fig, "Accuracy vs number of demonstrations")
    rep.data = result
    if out is not None:
        rep.write(out)
    return rep
