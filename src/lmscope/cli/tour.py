"""``lmscope tour``: reproduce the seeds' findings on the bundled model into one report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tour", help="run every seed-finding recipe into one report (resumable)")
    p.add_argument("--out", default="outputs/tour", help="report folder (one subfolder per recipe)")
    p.add_argument("--only", default=None, help="comma-separated recipe names")
    p.add_argument("--tiny", default=None, help="run the recipes on a tiny random model (mechanics only)")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmscope.tour import RECIPES, run_tour

    if args.list:
        for r in RECIPES:
            print(f"{r.name:16s} {r.finding}")
        return 0
    only = [s for s in args.only.split(",") if s] if args.only else None
    out = run_tour(args.out, tiny=args.tiny, only=only)
    print(f"tour written to {out / 'index.html'}")
    return 0
