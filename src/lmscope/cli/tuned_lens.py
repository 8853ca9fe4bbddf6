"""``lmscope tuned-lens``: train a tuned lens on the stdlib corpus, and compare it with the logit lens.

    lmscope tuned-lens train --out outputs/tuned-lens --tokens 8192      # Ctrl-C, rerun: resumes
    lmscope tuned-lens compare outputs/tuned-lens/tuned_lens.safetensors --out outputs/tuned-lens/compare
    lmscope lens "The capital of France is" --tuned outputs/tuned-lens/tuned_lens.safetensors

Registered by ``lmscope.cli.lens`` (same family).
"""

from __future__ import annotations

import argparse
import time

from lmscope.cli.common import model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tuned-lens", help="train / evaluate a tuned lens (Belrose et al. 2023)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="train translators (checkpoints + resume in --out)")
    t.add_argument("--out", required=True, help="folder for checkpoint.safetensors and tuned_lens.safetensors")
    t.add_argument("--tokens", type=int, default=8192, help="training tokens")
    t.add_argument("--seq-len", type=int, default=64)
    t.add_argument("--batch-size", type=int, default=4, help="windows per step")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--warmup", type=int, default=3, help="warm-up steps")
    t.add_argument("--checkpoint-every", type=int, default=2)
    t.add_argument("--exact", action="store_true", help="exact full-vocabulary KL (slow on CPU) instead of sampled softmax")
    t.add_argument("--compare-windows", type=int, default=12, help="held-out windows to compare on afterwards (0: skip)")
    c = actions.add_parser("compare", help="logit vs tuned lens on held-out text")
    c.add_argument("lens", help="a tuned_lens.safetensors file")
    c.add_argument("--windows", type=int, default=12, help="held-out windows of --seq-len tokens")
    c.add_argument("--seq-len", type=int, default=64)
    c.add_argument("--out", default=None, help="folder for result.json, the figure and index.html")
    for q in (t, c):
        q.add_argument("--model", default=None, help="bundled name, HF folder, .gguf or hub id (default: bundled)")
        q.add_argument("--tiny", default=None, help="use a tiny random model of this family (tests)")
    p.set_defaults(func=run)


def _compare(model, lens, windows: int, seq_len: int, out: str | None) -> None:
    from lmscope.cli.lens import print_table
    from lmscope.lenses.compare import compare_lenses

    cmp = compare_lenses(model, lens, n_windows=windows, seq_len=seq_len)
    print(f"held-out: {cmp.n_tokens} positions per layer ({cmp.corpus['n_docs']} held-out stdlib files available)")
    print_table(*cmp.table())
    wins = cmp.tuned_beats_logit()
    print(f"tuned lens has lower KL at {sum(wins)} of {len(wins)} layers"
          f"{'' if wins[-1] else ' (the last layer is the identity: both are exact there)'}")  # fmt: skip
    if out:
        print(f"wrote {cmp.save(out)}/index.html")


def run(args: argparse.Namespace) -> int:
    from lmscope.lenses.tuned_lens import FINAL, TunedLens, TunedLensConfig, train_tuned_lens

    t0 = time.time()
    model = model_from_args(args)
    if args.action == "train":
        cfg = TunedLensConfig(train_tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                              warmup_steps=args.warmup, checkpoint_every=args.checkpoint_every,
                              sampled_vocab=None if args.exact else TunedLensConfig.sampled_vocab)  # fmt: skip
        lens = train_tuned_lens(model, cfg, out=args.out)
        print(f"trained {cfg.steps} steps; wrote {args.out}/{FINAL}")
        if args.compare_windows:
            _compare(model, lens, args.compare_windows, args.seq_len, f"{args.out}/compare")
    else:
        _compare(model, TunedLens.load(args.lens, model), args.windows, args.seq_len, args.out)
    print(f"done in {time.time() - t0:.1f} s")
    return 0
