"""``lmscope multihop``: two-hop queries from known one-hop facts, emergence layers, backpatching.

    lmscope multihop --out outputs/multihop                       # logit lens, backpatch failed queries
    lmscope multihop --tuned outputs/tuned-lens/tuned_lens.safetensors --max-failed 10 --stride 4
"""

from __future__ import annotations

import argparse
import time

from lmscope.cli.common import model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("multihop", help="two-hop queries: bridge/answer emergence and backpatching", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--within", type=int, default=10, help='"decodable" = within the lens top-k (default 10)')
    p.add_argument("--tuned", default=None, metavar="FILE", help="decode with a trained tuned lens instead of the logit lens")
    p.add_argument("--max-failed", type=int, default=20, help="backpatch at most this many failed queries (0: skip)")
    p.add_argument("--stride", type=int, default=4, help="(j, i) grid stride for backpatching")
    p.add_argument("--limit", type=int, default=None, help="use at most this many two-hop queries")
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf or hub id (default: bundled)")
    p.add_argument("--tiny", default=None, help="use a tiny random model of this family (tests)")
    p.add_argument("--out", default=None, help="folder for result.json, index.html and the heatmap")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmscope.cli.lens import print_table
    from lmscope.lenses.multihop import analyze_two_hop, backpatch, build_two_hop, grid_pairs, save_multihop

    t0 = time.time()
    model = model_from_args(args)
    data = build_two_hop(model)
    if args.limit is not None:
        data.queries = data.queries[: args.limit]
    print("one-hop checks (facts with single-token answers):")
    print_table(["relation", "checked", "correct", "accuracy"],
                [[r, v["checked"], v["correct"], round(v["accuracy"], 3)] for r, v in data.one_hop.items()])  # fmt: skip
    translator, lens_name = None, "logit"
    if args.tuned:
        from lmscope.lenses.tuned_lens import TunedLens

        translator, lens_name = TunedLens.load(args.tuned, model).translate, "tuned"
    analysis = analyze_two_hop(model, data, within=args.within, translator=translator, lens_name=lens_name)
    s = analysis.summary()
    print(f"\n{s['n']} two-hop queries from known facts; two-hop accuracy {s['accuracy']:.3f}")
    print(f"first layer within the {lens_name} lens top-{args.within} at the last token (mean):")
    print(f"  bridge: correct {s['bridge_layer_mean']['correct']}, failed {s['bridge_layer_mean']['failed']} "
          f"(found in {s['bridge_found']['correct']} correct / {s['bridge_found']['failed']} failed queries)")  # fmt: skip
    print(f"  answer: correct {s['answer_layer_mean']['correct']}, failed {s['answer_layer_mean']['failed']}")
    patch = None
    failed = analysis.failed()[: args.max_failed]
    if failed and args.max_failed > 0:
        pairs = grid_pairs(model.shape.n_layers, args.stride)
        print(f"\nbackpatching {len(failed)} failed queries over {len(pairs)} (j, i) pairs (+ controls)...")
        patch = backpatch(model, failed, pairs=pairs)
        (bj, bi), best = patch.best_pair()
        print(f"fixed by at least one pair: {patch.fix_rate():.3f} (Biran et al. 2024: up to 0.66 on larger models)")
        same = float(patch.same_layer_fixed.any(1).float().mean())
        print(f"best single pair j={bj} -> i={bi}: {best:.3f}; control with an unrelated prompt's vectors: "
              f"{patch.control_rate():.3f}; j -> j (no-op): {same:.3f}")  # fmt: skip
    if args.out:
        folder = save_multihop(args.out, data, analysis, patch)
        print(f"wrote {folder}/index.html")
    print(f"done in {time.time() - t0:.1f} s")
    return 0
