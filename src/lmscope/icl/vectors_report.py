"""Recipe behind ``lmscope icl vectors``: per task and per layer, zero-shot vs ICL vs injected vectors.

For every task: first-token accuracy of zero-shot queries, of k-shot ICL prompts, and of zero-shot
queries with each vector injected at each layer (in-context vector, its raw variant, task vector,
function vector), plus Liu et al.'s all-layer ICV at a few strengths. Vectors are built from train
pairs. The best (method, layer) and Liu's strength are chosen on a dev split drawn from the train
pairs (never used to build the vectors) and reported on the held-out test pairs, beside a control of
the same size: an equal-norm random vector injected the same way at the same layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.experiments.progress import Log
from lmscope.experiments.report import Result, new_figure
from lmscope.experiments.stats import random_like
from lmscope.icl.function_vectors import aie_from_prompts, function_vector, head_prompts, top_heads
from lmscope.icl.tasks import FORMATS, Task, first_token_accuracy, load_task, make_queries, predict
from lmscope.icl.vectors import TaskVectors, ZeroShot, add_at_last, build_vectors, evaluate_injection, injected_logits

METHODS = ("icv", "icv_raw", "task_vector", "function_vector")
LIU_STRENGTHS = (0.05, 0.1, 0.2, 0.5)
"""Liu et al.'s lambda: the weight of the unit vector added to the unit MLP output (their scripts use ~0.1)."""
N_CONTROLS = 3


def _dev_size(task: Task) -> int:
    return min(15, len(task.train) // 3)


def _vector_of(vecs: TaskVectors, method: str, layer: int, fv: Tensor | None) -> Tensor:
    if method == "function_vector":
        assert fv is not None
        return fv
    return {"icv": vecs.icv, "icv_raw": vecs.mean_state, "task_vector": vecs.mean_state}[method][layer]


def random_control(model: Model, runs: ZeroShot, targets: list[int], method: str, vector: Tensor, layer: int, *,
                   seed: int = 0, draws: int = N_CONTROLS) -> float:  # fmt: skip
    """Mean test accuracy with an equal-norm random vector injected like ``method`` at ``layer`` (added, or put in
    place of the state for the task vector)."""
    gen = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(draws):
        r = random_like(vector.float(), gen)
        if method == "task_vector":
            logits = injected_logits(model, runs, lambda last, r=r: {Site("resid_post", layer): edits.replace(r, positions=last)},
                                     start=layer)  # fmt: skip
        else:
            logits = add_at_last(model, runs, r, layer)
        accs.append(first_token_accuracy(logits, targets))
    return sum(accs) / len(accs)


def vectors_report(
    model: Model, tasks: Sequence[str], out: str | Path | None = None, *, fmt: str = "qa", layers: Sequence[int] | None = None,
    k: int = 5, n: int = 30, fv_tasks: int = 3, fv_heads: int = 10, seed: int = 0, progress: Log | None = None,
) -> Result:  # fmt: skip
    """Run the whole evaluation; its :class:`Result` (``.data``: the numbers), written to ``out`` if given."""
    f = FORMATS[fmt]
    layers = list(range(0, model.shape.n_layers, 3)) if layers is None else list(layers)
    loaded = {name: load_task(name) for name in tasks}
    loaded = {name: t.with_dev(_dev_size(t), seed=seed) for name, t in loaded.items()}  # dev: never in a vector
    result: dict = {"model": model.model_id, "format": fmt, "k": k, "layers": layers, "tasks": {}, "summary": {}}
    heads: list[tuple[int, int]] = []
    prompts = {name: head_prompts(model, t, f, k=k, n_prompts=10, seed=seed) for name, t in loaded.items()}
    if fv_tasks > 0:
        if progress:
            progress(f"ranking heads by AIE on {list(loaded)[:fv_tasks]}")
        aies = [aie_from_prompts(model, prompts[name]) for name in list(loaded)[:fv_tasks]]
        aie = torch.stack(aies).mean(0)
        heads = top_heads(aie, fv_heads)
        result["aie"] = aie.tolist()
        result["fv_heads"] = heads
        result["aie_tasks"] = list(loaded)[:fv_tasks]
    for name, task in loaded.items():
        if progress:
            progress(f"vectors: {name}")
        q = make_queries(model, task, f, k=k, n=n, seed=seed)
        dev = make_queries(model, task, f, k=k, n=n, seed=seed, split="dev")
        row: dict = {
            "n": len(q.pairs), "n_dev": len(dev.pairs),
            "zero_shot": first_token_accuracy(predict(model, q.zero_shot), q.targets),
            "icl": first_token_accuracy(predict(model, q.few_shot), q.targets),
            "dev": {},
        }  # fmt: skip
        vecs = build_vectors(model, task, f, layers, k=k, n_prompts=20, seed=seed)
        runs = ZeroShot(model, q.zero_shot, layers)  # run once; each injection re-runs its layer and above
        dev_runs = ZeroShot(model, dev.zero_shot, layers)
        for method in METHODS[:3]:
            row[method] = [evaluate_injection(model, runs, q.targets, method, vecs, layer) for layer in layers]
            row["dev"][method] = [evaluate_injection(model, dev_runs, dev.targets, method, vecs, layer) for layer in layers]
        fv = None
        if heads:
            fv = function_vector(model, prompts[name].clean, heads)
            row["function_vector"] = [first_token_accuracy(add_at_last(model, runs, fv, layer), q.targets) for layer in layers]
            row["dev"]["function_vector"] = [first_token_accuracy(add_at_last(model, dev_runs, fv, layer), dev.targets)
                                             for layer in layers]  # fmt: skip
        row["liu"] = {str(s): evaluate_injection(model, runs, q.targets, "liu", vecs, None, scale=s) for s in LIU_STRENGTHS}
        row["dev"]["liu"] = {str(s): evaluate_injection(model, dev_runs, dev.targets, "liu", vecs, None, scale=s)
                             for s in LIU_STRENGTHS}  # fmt: skip
        result["tasks"][name] = row
        cells = [(m, j) for m in METHODS if m in row for j in range(len(layers))]
        m_best, j_best = max(cells, key=lambda c: row["dev"][c[0]][c[1]])  # chosen on dev (first of ties)
        control = random_control(model, runs, q.targets, m_best, _vector_of(vecs, m_best, layers[j_best], fv),
                                 layers[j_best], seed=seed)  # fmt: skip
        liu_s = max(LIU_STRENGTHS, key=lambda s: row["dev"]["liu"][str(s)])
        on_dev = {m: max(range(len(layers)), key=lambda i, m=m: row["dev"][m][i]) for m in METHODS if m in row}
        result["summary"][name] = {
            "zero_shot": row["zero_shot"], "icl": row["icl"], "best_method": m_best, "best_layer": layers[j_best],
            "best_acc": row[m_best][j_best], "best_dev_acc": row["dev"][m_best][j_best], "control": control,
            "liu_best": row["liu"][str(liu_s)], "liu_best_strength": liu_s,
            **{f"best_{m}": row[m][j] for m, j in on_dev.items()},
            **{f"best_layer_{m}": layers[j] for m, j in on_dev.items()},
        }  # fmt: skip
    return _write(model, result, out, layers)


def _write(model: Model, result: dict, out: str | Path | None, layers: list[int]) -> Result:
    rep = Result(f"In-context, task and function vectors — {model.model_id}, format {result['format']}")
    names = list(result["tasks"])
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = new_figure(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        r = result["tasks"][name]
        for m in METHODS:
            if m in r:
                ax.plot(layers, r[m], marker="o", ms=3, label=m)
        ax.axhline(r["icl"], color="k", ls="--", lw=1, label="ICL")
        ax.axhline(r["zero_shot"], color="grey", ls=":", lw=1, label="zero-shot")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("layer")
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    rep.figure("vectors_per_task", fig, "Held-out first-token accuracy with a vector injected at each layer")
    fig, ax = new_figure(figsize=(7, 4))
    for m in METHODS:
        if all(m in result["tasks"][n] for n in names):
            ax.plot(layers, [sum(result["tasks"][n][m][j] for n in names) / len(names) for j in range(len(layers))],
                    marker="o", label=m)  # fmt: skip
    ax.axhline(sum(result["tasks"][n]["icl"] for n in names) / len(names), color="k", ls="--", label="ICL")
    ax.axhline(sum(result["tasks"][n]["zero_shot"] for n in names) / len(names), color="grey", ls=":", label="zero-shot")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean accuracy over tasks")
    ax.legend(fontsize=7)
    rep.figure("vectors_mean", fig, "Mean over tasks")
    s = result["summary"]
    rep.table("Per task: test first-token accuracy of the cell chosen on dev, and an equal-norm random vector there",
              ["task", "zero-shot", "ICL", "best vector", "(dev)", "method", "layer", "random control", "ICV", "TV", "FV",
               "Liu (lambda)"],
              [[n, s[n]["zero_shot"], s[n]["icl"], s[n]["best_acc"], s[n]["best_dev_acc"], s[n]["best_method"],
                s[n]["best_layer"], s[n]["control"], s[n].get("best_icv"), s[n].get("best_task_vector"),
                s[n].get("best_function_vector"), f"{s[n]['liu_best']:.2f} ({s[n]['liu_best_strength']})"]
               for n in names])  # fmt: skip
    if "fv_heads" in result:
        rep.text("Function-vector heads", f"top heads (layer, head) by mean AIE over {result['aie_tasks']}: {result['fv_heads']}")
        fig, ax = new_figure(figsize=(5, 7))
        im = ax.imshow(torch.tensor(result["aie"]).numpy(), aspect="auto", cmap="RdBu_r")
        fig.colorbar(im, ax=ax)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        rep.figure("aie", fig, "Average indirect effect per head")
    rep.data = result
    if out is not None:
        rep.write(out)
    return rep
