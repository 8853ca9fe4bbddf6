"""Uncertainty for reported effects: every rate gets an interval, every effect a control.

- :func:`wilson`: the Wilson score interval of a proportion (k of n), which behaves at 0 and n;
- :func:`diff_ci`: a seeded bootstrap interval for the difference of two rates measured on the
  same items (paired: each item is resampled with both its outcomes);
- :func:`compare`: an effect against its control as one JSON record with a verdict, "effect"
  only when the interval of the difference excludes zero in the claimed direction;
  :func:`compare_means` the same for scores that are not 0/1 (sentiment, log-probabilities);
- :func:`random_like`: the equal-norm random vector every "random direction" control uses.

    >>> lo, hi = wilson(3, 20)
    >>> round(lo, 3), round(hi, 3)
    (0.052, 0.36)
    >>> compare([1, 1, 1, 1, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0, 0, 0])["verdict"]
    'effect'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (``z`` = 1.96) Wilson score interval of ``k`` successes in ``n`` trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the ends (no 0.9999999999999999)


def diff_ci(a: Sequence[float], b: Sequence[float], *, paired: bool = True, n_boot: int = 2000, seed: int = 0,
            level: float = 0.95) -> tuple[float, float]:  # fmt: skip
    """Bootstrap interval of mean(a) - mean(b); ``paired`` resamples items with both outcomes."""
    x, y = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if x.numel() == 0 or y.numel() == 0:
        raise ValueError("diff_ci needs outcomes on both sides")
    if paired and x.shape != y.shape:
        raise ValueError(f"paired outcomes need the same items: {x.numel()} vs {y.numel()}")
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=g)
    j = i if paired else torch.randint(0, y.numel(), (n_boot, y.numel()), generator=g)
    d = x[i].mean(1) - y[j].mean(1)
    lo, hi = torch.quantile(d, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return lo, hi


def compare(effect: Sequence[float], control: Sequence[float], *, direction: int = 1, paired: bool = True,
            seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Rates of ``effect`` and ``control`` outcomes (0/1 per item) with Wilson intervals, the difference with
    its bootstrap interval, and a verdict: "effect" when the interval excludes 0 on the ``direction`` side."""
    ke, kc = int(sum(effect)), int(sum(control))
    ne, nc = len(effect), len(control)
    lo, hi = diff_ci(effect, control, paired=paired, seed=seed)
    diff = ke / ne - kc / nc
    yes = lo > 0 if direction > 0 else hi < 0
    return {"rate": ke / ne, "n": ne, "ci": wilson(ke, ne), "control_rate": kc / nc, "control_n": nc,
            "control_ci": wilson(kc, nc), "difference": diff, "difference_ci": (lo, hi),
            "verdict": "effect" if yes else "no effect"}  # fmt: skip


def compare_means(effect: Sequence[float], control: Sequence[float], *, direction: int = 1, paired: bool = True,
                  seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Means of ``effect`` and ``control`` scores, the difference with its bootstrap interval, and a verdict:
    "effect" when the interval excludes 0 on the ``direction`` side."""
    if not effect or not control:
        raise ValueError("compare_means needs scores on both sides")
    lo, hi = diff_ci(effect, control, paired=paired, seed=seed)
    mean, cmean = sum(effect) / len(effect), sum(control) / len(control)
    yes = lo > 0 if direction > 0 else hi < 0
    return {"mean": mean, "n": len(effect), "control_mean": cmean, "control_n": len(control),
            "difference": mean - cmean, "difference_ci": (lo, hi), "verdict": "effect" if yes else "no effect"}  # fmt: skip


def random_like(v: torch.Tensor, seed: int | torch.Generator) -> torch.Tensor:
    """A seeded random direction with the norm of ``v`` (the equal-norm control of a vector); ``seed`` may be a
    generator, so that several draws come from one seeded stream."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    r = torch.randn(v.shape, generator=gen).to(v)
    return r / r.norm() * v.norm()
