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
    peak_mb: dict[str, float] = field(default_factory=dict)
    """Peak resident memory of the process during each variant's first run (Linux; NaN elsewhere)."""

    def median(self, variant: str) -> float:
        return statistics.median(self.samples[variant])

    def spread(self, variant: str) -> float:
        """Interquartile range over the median (a noise indicator)."""
        xs = sorted(self.samples[variant])
        if len(xs) < 4:
            return (xs[-1] - xs[0]) / statistics.median(xs)
        q = statistics.quantiles(xs, n=4)
        return (q[2] - q[0]) / statistics.median(xs)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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
            tracked = r == 0 and _reset_peak()
            t0 = time.perf_counter()
            variants[v]()
            out.samples[v].append(time.perf_counter() - t0)
            if r == 0:
                out.peak_mb[v] = _peak_mb() if tracked else float("nan")
        print(f"[{name}] repetition {r + 1}/{reps} done", file=sys.stderr, flush=True)
    return out
