"""The ``lmscope`` command. Each family adds its subcommands from ``lmscope.cli.<family>``.

A family module exposes ``register(subparsers)``; it adds its parser(s) and sets
``func=`` on each to a function taking the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

FAMILY_MODULES = (
    "info", "harvest", "lens", "patchscope", "multihop", "steer", "introspect", "icl", "neurons", "sae", "circuits",
    "relations", "sparse", "tour",
)


def set_threads(n: int | None = None) -> None:
    """Pin torch's CPU threads (oversubscribed threads are much slower on small machines)."""
    import torch

    threads = n or int(os.environ.get("LMSCOPE_THREADS", "0")) or min(4, os.cpu_count() or 1)
    torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmscope", description="Look inside language models and change what you find.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default $LMSCOPE_THREADS)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in FAMILY_MODULES:
        try:
            module = importlib.import_module(f"lmscope.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lmscope.cli.{name}":
                continue  # that family has no CLI yet
            raise
        module.register(sub)
    return parser


EXIT_USAGE = 2
"""Bad arguments or input files (argparse uses 2 as well)."""
EXIT_RUNTIME = 1
"""The work itself failed (after the model loaded)."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    set_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, IndexError, KeyError, NotImplementedError) as exc:
        # Exit codes: 2 = usage (bad arguments or input files, found before the model loads), 1 = the work failed.
        runtime = getattr(args, "work_started", False)
        print(f"lmscope: {'error' if runtime else 'usage error'}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME if runtime else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
