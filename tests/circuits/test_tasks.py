"""Task generators: structure on a tiny tokenizer, accuracy and tokenization on the bundled model."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope import circuits as C

WORDS = ["Mary", "John", "world", "hello", "dog", "fox"]


def test_ioi_pairs_have_abba_baba_orders_and_abc_corruption() -> None:
    model = ls.load_tiny("llama")
    names = C.tasks.single_token_names(model, WORDS + ["quick", "lazy"])
    assert "quick" not in names and "Mary" in names  # " quick" is two tokens in the tiny tokenizer
    task = C.ioi_task(model, n=12, seed=1, names=WORDS)
    clean, corrupt = task.batches(model)
    assert clean.shape == corrupt.shape and task.n == 12
    diff = (clean.input_ids != corrupt.input_ids).sum(1)
    assert bool((diff == 1).all())  # ABC: only the second subject mention changes
    orders = set()
    for text, good, bad in zip(task.clean, task.correct, task.wrong, strict=True):
        io, s = model.tokenizer.decode(good).strip(), model.tokenizer.decode(bad).strip()
        assert text.count(s) == 2 and text.count(io) == 1
        orders.add("ABBA" if text.index(io) < text.index(s) else "BABA")
    assert orders == {"ABBA", "BABA"}
    logits = torch.zeros(12, clean.shape[1], len(model.tokenizer))
    rows = torch.arange(12)
    logits[rows, -1, torch.tensor([c[0] for c in task.correct])] = 2.0
    assert torch.equal(task.metric(logits), torch.full((12,), 2.0))
    assert torch.equal(task.metric(logits.repeat(3, 1, 1)), torch.full((36,), 2.0))  # stacked copies
    with pytest.raises(ValueError, match="at least 3"):
        C.ioi_task(model, names=["Mary", "John"])


@pytest.mark.bundled
def test_bundled_tasks(smollm: ls.Model) -> None:
    ioi = C.filter_correct(smollm, C.ioi_task(smollm, n=16, seed=0))
    assert ioi.accuracy >= 0.8 and ioi.clean_metric > 2.0 and abs(ioi.corrupt_metric) < ioi.clean_metric / 2
    gt = C.greater_than_task(smollm, n=8, seed=0)
    assert gt.kind == "prob_diff" and all(p.endswith("to the year " + p.split("year ")[1][:2]) for p in gt.clean)
    kept = C.filter_correct(smollm, gt)
    assert kept.accuracy >= 0.5 and kept.clean_metric > kept.corrupt_metric
    cap = C.capital_task(smollm, n=12, seed=0)
    assert cap.n >= 8 and C.filter_correct(smollm, cap).accuracy > 0.3
