"""The one progress mechanism: bars for counted work, message lines for stages.

Every long loop in lmscope reports through here, so progress looks the same everywhere and goes
to stderr (stdout stays for results):

- :func:`bar` for work with a known size (training steps, harvested tokens, scored batches);
- a ``progress`` callable (``Callable[[str], None]``, e.g. ``Context.log``) that library functions
  accept for stage messages ("ablation mean: scoring run 3/18"); None keeps them quiet.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

Log = Callable[[str], None]
"""A receiver of progress messages."""


def bar(total: int | None, desc: str, *, items: Iterable[Any] | None = None, initial: int = 0, unit: str = "it",
        enabled: bool = True, unit_scale: bool = False) -> Any:  # fmt: skip
    """A progress bar on stderr (tqdm; iterate it when ``items`` is given); silent when ``enabled`` is False."""
    from tqdm.auto import tqdm

    return tqdm(items, total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, disable=not enabled,
                file=sys.stderr, mininterval=1.0, leave=False)  # fmt: skip


def stderr_log(prefix: str) -> Log:
    """A :data:`Log` that writes ``[prefix] message`` lines to stderr."""

    def log(message: str) -> None:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)

    return log
