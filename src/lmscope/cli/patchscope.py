"""``lmscope patchscope``: patch a hidden state into another prompt and read what the model says.

    lmscope patchscope "Diana, Princess of Wales" --preset description --layers 0-29:3 --out outputs/ps
    lmscope patchscope "The capital of France is" --preset next_token
    lmscope patchscope "Paris" --target-prompt "Tell me about x" --target-layer 4 --layers 0-20:2
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from lmscope.cli.common import model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patchscope", help="Patchscopes: decode a hidden state by patching it into a target prompt",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("source", nargs="+", help="source prompt(s); one layer sweep each")
    p.add_argument("--preset", default="description", help="identity | description | next_token (ignored with --target-prompt)")
    p.add_argument("--target-prompt", default=None, help="custom target prompt")
    p.add_argument("--layers", default="all", help='source layers: "all", "0-29:3", "4,8,12"')
    p.add_argument("--target-layer", type=int, default=None, help="fixed target layer (default: same as the source layer)")
    p.add_argument("--source-position", type=int, default=-1, help="token index in the source prompt (default last)")
    p.add_argument("--target-position", type=int, default=-1, help="token index in the target prompt (default last)")
    p.add_argument("--site", default="resid_post", help="residual-basis kind read and written")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf or hub id (default: bundled)")
    p.add_argument("--tiny", default=None, help="use a tiny random model of this family (tests)")
    p.add_argument("--out", default=None, help="folder for result.json and index.html (one subfolder per source)")
    p.set_defaults(func=run)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "source"


def run(args: argparse.Namespace) -> int:
    from lmscope.cli.lens import parse_layers, print_table
    from lmscope.lenses.patchscopes import PRESETS, patchscope_sweep

    t0 = time.time()
    model = model_from_args(args)
    layers = parse_layers(args.layers, model.shape.n_layers)
    if args.target_prompt is None and args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose from {sorted(PRESETS)}")
    target = args.target_prompt if args.target_prompt is not None else PRESETS[args.preset]
    max_new = 1 if (args.target_prompt is None and args.preset == "next_token") else args.max_new_tokens
    for source in args.source:
        sweep = patchscope_sweep(model, source, source_layers=layers, target_layer=args.target_layer,
                                 source_position=args.source_position, target_prompt=target,
                                 target_position=args.target_position, kind=args.site, max_new_tokens=max_new)  # fmt: skip
        row = sweep.rows[0]
        print(f"\nsource {source!r} at token {row.source_token!r} -> target {target!r} (model's next token: "
              f"{sweep.model_next_token!r})")  # fmt: skip
        print_table(*sweep.table())
        if args.out:
            folder = Path(args.out) / _slug(source) if len(args.source) > 1 else Path(args.out)
            sweep.save(folder, title=f"Patchscope: {source}")
            print(f"wrote {folder}/index.html")
    print(f"done in {time.time() - t0:.1f} s")
    return 0
