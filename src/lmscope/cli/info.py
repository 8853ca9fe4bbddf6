"""``lmscope info [MODEL]``: the model's shape and every site with its tensor shape."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a model's sites with their shapes")
    p.add_argument("model", nargs="?", default=None, help="bundled name, HF folder, .gguf file or hub id")
    p.add_argument("--tiny", default=None, help="use a tiny random model of this family instead")
    p.add_argument("--layer", type=int, default=None, help="only this layer's sites")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import lmscope as ls

    model = ls.load_tiny(args.tiny) if args.tiny else ls.load(args.model)
    print(model)
    print(f"attention: {model.attn_implementation} (attn_pattern needs eager)")
    for site in model.sites():
        if site.kind == "resid_mid" and model.is_parallel:
            continue
        if args.layer is not None and site.layer not in (None, args.layer):
            continue
        print(f"  {str(site):34s} {site.kind:13s} ({', '.join(model.site_shape(site))})")
    return 0
