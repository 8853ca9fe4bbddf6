"""``lmscope icl vectors|algebra|rank1|trajectory``: in-context learning from the inside.

Each command writes ``result.json``, PNG figures and ``index.html`` to ``--out``:

    lmscope icl vectors --tasks antonyms,country_capital --layers 0,3,6,9,12,15,18,21,24,27
    lmscope icl algebra --layers 9,12,15,18 --item-task present_past
    lmscope icl rank1 --tasks antonyms,singular_plural
    lmscope icl trajectory --task antonyms --takeaways antonyms,present_past
"""

from __future__ import annotations

import argparse

from lmscope.cli.common import model_from_args

DEFAULT_TASKS = (
    "antonyms,country_capital,singular_plural,present_past,lower_upper,country_language,city_country,word_first_letter"
)


def _model(args: argparse.Namespace):
    return model_from_args(args)


def _ints(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",")] if text else None


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf file or hub id (default: bundled)")
    p.add_argument("--tiny", default=None, help="use a tiny random model of this family (for a quick dry run)")
    p.add_argument("--format", default="qa", choices=["qa", "arrow", "colon"], help="prompt format")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out, help="output folder")


def register(sub: argparse._SubParsersAction) -> None:
    icl = sub.add_parser("icl", help="in-context, task and function vectors; the implicit rank-1 update")
    s = icl.add_subparsers(dest="icl_command", metavar="ICL_COMMAND", required=True)

    p = s.add_parser("vectors", help="zero-shot / ICL / vector-injected accuracy per layer for each task")
    _common(p, "lmscope-out/icl-vectors")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated task names")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: every third)")
    p.add_argument("--k", type=int, default=5, help="demonstrations per prompt")
    p.add_argument("--n", type=int, default=30, help="held-out queries per task")
    p.add_argument("--fv-tasks", type=int, default=3, help="tasks used to rank heads for function vectors (0: skip)")
    p.add_argument("--fv-heads", type=int, default=10, help="heads summed into a function vector")
    p.set_defaults(func=run_vectors)

    p = s.add_parser("algebra", help="composition benchmark: capital(last) = capital(first) + last - first")
    _common(p, "lmscope-out/icl-algebra")
    p.add_argument("--layers", default=None, help="comma-separated layers")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--n", type=int, default=24, help="held-out lists")
    p.add_argument("--item-task", default="country_capital", help="task applied to the first/last item (f)")
    p.set_defaults(func=run_algebra)

    p = s.add_parser("rank1", help="per-layer rank-1 identity, whole-model absorption KL, transfer")
    _common(p, "lmscope-out/icl-rank1")
    p.add_argument("--tasks", default="antonyms,singular_plural,country_capital,present_past")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--queries", type=int, default=5, help="absorption queries per task")
    p.add_argument("--sources", type=int, default=2, help="source queries per task for transfer")
    p.add_argument("--targets", type=int, default=20, help="target queries per task for transfer")
    p.add_argument("--no-transfer", action="store_true")
    p.set_defaults(func=run_rank1)

    p = s.add_parser("trajectory", help="token-by-token implicit updates and the takeaway experiments")
    _common(p, "lmscope-out/icl-trajectory")
    p.add_argument("--task", default="antonyms")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--n", type=int, default=20, help="held-out queries per takeaway condition")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--takeaways", default="", help="comma-separated tasks for the takeaway experiments")
    p.set_defaults(func=run_trajectory)


def run_rank1(args: argparse.Namespace) -> int:
    from lmscope.icl.implicit_report import rank1_report

    model = _model(args)
    res = rank1_report(
        model, args.tasks.split(","), args.out, fmt=args.format, k=args.k, n_queries=args.queries,
        n_sources=args.sources, n_targets=args.targets, seed=args.seed, do_transfer=not args.no_transfer,
    )  # fmt: skip
    errs = [c["rel_err_fp32"] for c in res["identity"]]
    kls = [r["kl_absorbed_both"] for r in res["absorption"] if "kl_absorbed_both" in r]
    print(f"identity: max fp32 relative error {max(errs):.2e} over {len(errs)} layers")
    if kls:
        print(f"absorption: max KL {max(kls):.2e} nats over {len(kls)} queries")
    print(f"wrote {args.out}/index.html")
    return 0


def run_trajectory(args: argparse.Namespace) -> int:
    from lmscope.icl.implicit_report import trajectory_report

    model = _model(args)
    takeaways = [t for t in args.takeaways.split(",") if t]
    res = trajectory_report(
        model, args.task, args.out, fmt=args.format, k=args.k, n_queries=args.n, seed=args.seed,
        takeaway_tasks=takeaways, layers=_ints(args.layers),
    )  # fmt: skip
    conv = res["trajectory"]["convergence_last_over_first_quarter"]
    print(f"median step ratio (last/first quarter of the context): {sorted(conv)[len(conv) // 2]:.3f}")
    print(f"wrote {args.out}/index.html")
    return 0


def run_vectors(args: argparse.Namespace) -> int:
    from lmscope.icl.vectors_report import vectors_report

    model = _model(args)
    res = vectors_report(
        model, args.tasks.split(","), args.out, fmt=args.format, layers=_ints(args.layers), k=args.k, n=args.n,
        fv_tasks=args.fv_tasks, fv_heads=args.fv_heads, seed=args.seed,
    )  # fmt: skip
    for name, r in res["summary"].items():
        print(f"{name:20s} zero-shot {r['zero_shot']:.2f}  ICL {r['icl']:.2f}  best vector {r['best_method']} "
              f"{r['best_acc']:.2f} at layer {r['best_layer']}")  # fmt: skip
    print(f"wrote {args.out}/index.html")
    return 0


def run_algebra(args: argparse.Namespace) -> int:
    from lmscope.icl.algebra import algebra_report

    model = _model(args)
    res = algebra_report(
        model, args.out, fmt=args.format, layers=_ints(args.layers), k=args.k, n=args.n, seed=args.seed, item_task=args.item_task
    )
    print(f"best layer {res['best_layer']}: " + ", ".join(f"{k} {v:.2f}" for k, v in res["best"].items()))
    print(f"wrote {args.out}/index.html")
    return 0
