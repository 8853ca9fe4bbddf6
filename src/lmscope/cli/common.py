"""Pieces every family's commands share."""

from __future__ import annotations

import argparse
from typing import Any


def model_from_args(args: argparse.Namespace) -> Any:
    """The model a command asked for: ``--tiny FAMILY`` (a tiny random model) or ``--model`` (default: bundled)."""
    from lmscope.core.loading import load
    from lmscope.core.tiny import load_tiny

    tiny = getattr(args, "tiny", None)
    model = load_tiny(tiny) if tiny else load(getattr(args, "model", None))
    args.work_started = True  # from here on a failure is a runtime error (exit 1), not a usage error (exit 2)
    return model
