"""Vector algebra: composing in-context vectors into a task nobody demonstrated.

The lecture (seed 001, after Todd et al. 2024) shows that task vectors add like words in
word2vec: capital-of-the-last-country = capital-of-the-first + copy-last - copy-first. Here the
benchmark is built from lists of 3-5 items and an item task f (default ``country_capital`` with
the built-in ``tasks/lists.jsonl``; any built-in task works, e.g. ``present_past``): four list
tasks (``first``, ``last``, ``f_first``, ``f_last``) with disjoint train/test lists. For each
layer, the in-context vector (mean k-shot minus mean zero-shot last-token state,
:mod:`lmscope.icl.vectors`) of every ingredient is built from train lists, and the composed vector

    v = v(f_first) + v(last) - v(first)

is added at the last token of zero-shot test queries. It is scored against each ingredient
alone, against the vector of ``f_last`` built directly from its own demonstrations, and
against k-shot ICL on ``f_last``; each ingredient is also scored on its own task.

    >>> from lmscope.icl.algebra import list_tasks
    >>> sorted(list_tasks())
    ['f_first', 'f_last', 'first', 'last']
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from lmscope.core.model import Model
from lmscope.data.bundled import load_jsonl
from lmscope.experiments.report import Result, new_figure
from lmscope.icl.tasks import FORMATS, Pair, Task, first_token_accuracy, load_task, make_queries, predict
from lmscope.icl.vectors import ZeroShot, add_at_last, build_vectors


def list_tasks(item_task: str = "country_capital", *, seed: int = 0) -> dict[str, Task]:
    """The four list tasks: copy first / last item, and ``item_task`` applied to the first / last item.

    With the default ``country_capital`` the lists are the built-in ``tasks/lists.jsonl``; for any
    other item task, lists of 3-5 inputs are drawn (seeded) from that task's train inputs for the
    train split and from its test inputs for the test split, so no test list shares an item with training.
    """
    table = {p.input: p.output for p in load_task(item_task).pairs}
    if item_task == "country_capital":
        lists = load_jsonl("tasks/lists.jsonl")
    else:
        rng = random.Random(seed)
        task = load_task(item_task)
        lists = []
        for split, n in (("train", 56), ("test", 24)):
            pool = [p.input for p in (task.train if split == "train" else task.test)]
            seen: set[tuple[str, ...]] = set()
            while len([r for r in lists if r["split"] == split]) < n and len(seen) < 10 * n:
                items = tuple(rng.sample(pool, rng.randint(3, min(5, len(pool)))))
                if items not in seen:
                    seen.add(items)
                    lists.append({"items": list(items), "split": split})
    missing = sorted({i for r in lists for i in r["items"] if i not in table})
    if missing:
        raise ValueError(f"list items without an answer in {item_task}: {missing}")
    answer = {
        "first": lambda items: items[0],
        "last": lambda items: items[-1],
        "f_first": lambda items: table[items[0]],
        "f_last": lambda items: table[items[-1]],
    }
    return {
        name: Task(name, tuple(Pair(", ".join(r["items"]), fn(r["items"]), r["split"]) for r in lists))
        for name, fn in answer.items()
    }


def algebra_report(
    model: Model, out: str | Path | None = None, *, fmt: str = "qa", layers: Sequence[int] | None = None, k: int = 5, n: int = 24,
    seed: int = 0, item_task: str = "country_capital",
) -> Result:  # fmt: skip
    """Run the composition benchmark per layer; its :class:`Result` (``.data``: the numbers), written to ``out`` if given."""
    f = FORMATS[fmt]
    layers = list(range(0, model.shape.n_layers, 3)) if layers is None else list(layers)
    tasks = list_tasks(item_task, seed=seed)
    target = tasks["f_last"]
    q = make_queries(model, target, f, k=k, n=n, seed=seed)
    zero_logits = predict(model, q.zero_shot)
    few_logits = predict(model, q.few_shot)
    vecs = {name: build_vectors(model, t, f, layers, k=k, n_prompts=20, seed=seed) for name, t in tasks.items()}
    # how often an answer is f(first item) / the last item itself (what the ingredients do)
    cap_first = make_queries(model, tasks["f_first"], f, k=k, n=n, seed=seed).targets
    copy_last = make_queries(model, tasks["last"], f, k=k, n=n, seed=seed).targets
    result: dict = {
        "model": model.model_id, "format": fmt, "k": k, "layers": layers, "n": len(q.pairs),
        "zero_shot": first_token_accuracy(zero_logits, q.targets), "icl": first_token_accuracy(few_logits, q.targets),
        "item_task": item_task, "per_layer": {}, "ingredients": {},
    }  # fmt: skip
    candidates = {
        "composed": lambda L: vecs["f_first"].icv[L] + vecs["last"].icv[L] - vecs["first"].icv[L],
        "f_first_only": lambda L: vecs["f_first"].icv[L],
        "last_only": lambda L: vecs["last"].icv[L],
        "f_first+last": lambda L: vecs["f_first"].icv[L] + vecs["last"].icv[L],
        "direct_f_last": lambda L: vecs["f_last"].icv[L],
    }
    for name, t in tasks.items():  # can the model do each ingredient, with ICL and with its own vector?
        iq = make_queries(model, t, f, k=k, n=n, seed=seed)
        runs = ZeroShot(model, iq.zero_shot, layers)
        own = [first_token_accuracy(add_at_last(model, runs, vecs[name].icv[L], L), iq.targets) for L in layers]
        result["ingredients"][name] = {
            "zero_shot": first_token_accuracy(predict(model, iq.zero_shot), iq.targets),
            "icl": first_token_accuracy(predict(model, iq.few_shot), iq.targets), "own_vector_per_layer": own,
        }  # fmt: skip
    runs = ZeroShot(model, q.zero_shot, layers)
    for layer in layers:
        row = {}
        for name, make in candidates.items():
            logits = add_at_last(model, runs, make(layer), layer)
            row[name] = first_token_accuracy(logits, q.targets)
            if name == "composed":
                row["composed_says_f_first"] = first_token_accuracy(logits, cap_first)
                row["composed_says_last_item"] = first_token_accuracy(logits, copy_last)
        result["per_layer"][str(layer)] = row
    best = max(layers, key=lambda L: result["per_layer"][str(L)]["composed"])
    result["best_layer"] = best
    result["best"] = {"zero_shot": result["zero_shot"], "icl": result["icl"]} | {
        m: result["per_layer"][str(best)][m] for m in candidates
    }
    return _write(model, result, out, layers, list(candidates))


def _write(model: Model, result: dict, out: str | Path | None, layers: list[int], names: list[str]) -> Result:
    rep = Result(f"Vector algebra: {result['item_task']} of the last item — {model.model_id}")
    fig, ax = new_figure(figsize=(8, 4.5))
    for name in names:
        ax.plot(layers, [result["per_layer"][str(L)][name] for L in layers], marker="o", ms=3, label=name)
    ax.axhline(result["icl"], color="k", ls="--", label=f"ICL (k={result['k']})")
    ax.axhline(result["zero_shot"], color="grey", ls=":", label="zero-shot")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"accuracy: {result['item_task']} of the last item")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    rep.figure("algebra", fig, "Composed vector v(f_first) + v(last) - v(first) vs its ingredients")
    rep.table("Per layer (held-out lists)", ["layer", *names, "composed says f(first)", "composed says last item"],
              [[L, *[result["per_layer"][str(L)][m] for m in names], result["per_layer"][str(L)]["composed_says_f_first"],
                result["per_layer"][str(L)]["composed_says_last_item"]] for L in layers])  # fmt: skip
    rep.table("Ingredients on their own tasks", ["task", "zero-shot", "ICL", "own vector, best layer"],
              [[t, r["zero_shot"], r["icl"], max(r["own_vector_per_layer"])]
               for t, r in result["ingredients"].items()])  # fmt: skip
    rep.text("Baselines", f"zero-shot {result['zero_shot']:.3f}, ICL {result['icl']:.3f} on {result['n']} held-out lists")
    rep.data = result
    if out is not None:
        rep.write(out)
    return rep
