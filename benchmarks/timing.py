"""Interleaved timing: every variant runs once per repetition, in a rotating order, and we keep medians.

On a shared or throttling machine, timing variant A for a minute and then variant B for a
minute compares two different machines. Interleaving puts each variant in every time slot,
and the median discards the repetitions a neighbour's job disturbed.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timings:
    """Seconds per repetition for each variant of one benchmark."""

    name: str
    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, variant: str) -> float:
        return statistics.median(self.samples[variant])

    def spread(self, variant: str) -> float:
        """Interquartile range over the median (a noise indicator)."""
        xs = sorted(self.samples[variant])
        if len(xs) < 4:
            return (xs[-1] - xs[0]) / statistics.median(xs)
        q = statistics.quantiles(xs, n=4)
        return (q[2] - q[0]) / statistics.median(xs)


def interleaved(name: str, variants: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> Timings:
    """Time each variant ``reps`` times, rotating the order every repetition."""
    names = list(variants)
    for _ in range(warmup):
        for v in names:
            variants[v]()
    out = Timings(name, {v: [] for v in names})
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for v in order:
            gc.collect()
            t0 = time.perf_counter()
            variants[v]()
            out.samples[v].append(time.perf_counter() - t0)
        print(f"[{name}] repetition {r + 1}/{reps} done", file=sys.stderr, flush=True)
    return out
