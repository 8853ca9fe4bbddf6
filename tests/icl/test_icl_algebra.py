"""The composition benchmark's data and the takeaway conditions' construction."""

from __future__ import annotations

import random

import lmscope as ls
from lmscope.data.bundled import load_jsonl
from lmscope.icl.algebra import list_tasks
from lmscope.icl.takeaways import negative_context, similar_and_diverse
from lmscope.icl.tasks import FORMATS, load_task


def test_list_tasks_answers_and_splits() -> None:
    tasks = list_tasks()
    capitals = {r["input"]: r["output"] for r in load_jsonl("tasks/country_capital.jsonl")}
    lists = load_jsonl("tasks/lists.jsonl")
    for name, t in tasks.items():
        assert len(t.pairs) == len(lists)
        assert not {p.input for p in t.train} & {p.input for p in t.test}, name
    for p, r in zip(tasks["f_last"].pairs, lists, strict=True):
        assert p.input == ", ".join(r["items"]) and p.output == capitals[r["items"][-1]] and p.split == r["split"]
    assert all(p.output == p.input.split(", ")[0] for p in tasks["first"].pairs)


def test_generated_lists_never_share_items_across_splits() -> None:
    tasks = list_tasks("present_past")
    past = {p.input: p.output for p in load_task("present_past").pairs}
    train_items = {i for p in tasks["last"].train for i in p.input.split(", ")}
    test_items = {i for p in tasks["last"].test for i in p.input.split(", ")}
    assert len(tasks["last"].train) == 56 and len(tasks["last"].test) == 24
    assert not train_items & test_items
    assert all(p.output == past[p.input.split(", ")[-1]] for p in tasks["f_last"].pairs)


def test_negative_context_never_shows_the_right_answer() -> None:
    task = load_task("antonyms")
    demos = task.train[:6]
    text = negative_context(FORMATS["qa"], demos, task.train, random.Random(0))
    blocks = [b for b in text.split("\n\n") if b]
    assert len(blocks) == 6
    for p, b in zip(demos, blocks, strict=True):
        q, a = b.split("\n")
        assert q == f"Q: {p.input}" and a.startswith("Wrong A: ") and a != f"Wrong A: {p.output}"


def test_diverse_examples_are_more_spread_than_similar(tiny_llama: ls.Model) -> None:
    from lmscope.icl.takeaways import _embed_inputs

    pool = load_task("country_capital").train
    similar, diverse = similar_and_diverse(tiny_llama, pool, 6, random.Random(0))
    assert len(set(similar)) == 6 and len(set(diverse)) == 6

    def mean_cos(pairs) -> float:
        v = _embed_inputs(tiny_llama, pairs)
        c = v @ v.T
        return float((c.sum() - c.diag().sum()) / (len(pairs) * (len(pairs) - 1)))

    assert mean_cos(diverse) < mean_cos(similar)
