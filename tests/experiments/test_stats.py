"""Intervals against textbook values and planted effects."""

from __future__ import annotations

import pytest
import torch

from lmscope.experiments.stats import compare, diff_ci, wilson


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [(3, 20, 0.0524, 0.3604), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
                                                  (50, 100, 0.4038, 0.5962)])  # fmt: skip
def test_wilson_matches_the_textbook_interval(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert got[0] <= k / n <= got[1]


def test_wilson_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson(3, 2)
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_a_planted_effect_is_found_and_no_effect_is_not() -> None:
    g = torch.Generator().manual_seed(0)
    control = (torch.rand(200, generator=g) < 0.2).int().tolist()
    effect = (torch.rand(200, generator=g) < 0.6).int().tolist()
    same = (torch.rand(200, generator=g) < 0.2).int().tolist()
    r = compare(effect, control, paired=False)
    assert r["verdict"] == "effect" and r["difference_ci"][0] < 0.4 < r["difference_ci"][1]
    assert compare(same, control, paired=False)["verdict"] == "no effect"
    assert compare(control, effect, direction=-1, paired=False)["verdict"] == "effect"
    lo, hi = diff_ci([1, 1, 0, 1], [0, 0, 0, 1], seed=1)
    assert lo <= 0.5 <= hi
    with pytest.raises(ValueError, match="same items"):
        diff_ci([1, 0], [1, 0, 1])
