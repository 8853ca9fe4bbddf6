"""``lmscope harvest``: stream activations of chosen sites over the built-in corpus into a shard store.

    lmscope harvest --sites blocks.6.hook_resid_post --tokens 200000 --out outputs/acts-l6

Interrupt it at any time (Ctrl-C) and rerun the same command: it resumes from the last completed shard.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("harvest", help="harvest activations over the built-in corpus into safetensors shards")
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf file or hub id (default: bundled)")
    p.add_argument("--tiny", default=None, help="use a tiny random model of this family instead")
    p.add_argument("--sites", nargs="+", required=True, help="site names, e.g. blocks.6.hook_resid_post")
    p.add_argument("--tokens", type=int, default=65536, help="tokens to store per site")
    p.add_argument("--out", required=True, help="store folder (resumed when it holds the same harvest)")
    p.add_argument("--seq-len", type=int, default=128, help="window length, BOS included")
    p.add_argument("--drop-first", type=int, default=1, help="positions dropped at the start of each window")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--shard-tokens", type=int, default=16384, help="tokens per shard (RAM holds one shard per site)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="storage dtype")
    p.add_argument("--split", default="train", choices=["train", "heldout"], help="corpus split")
    p.add_argument("--seed", type=int, default=0, help="corpus document order")
    p.add_argument("--overwrite", action="store_true", help="start over even if the folder holds another harvest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import lmscope as ls
    from lmscope.core.store import HarvestConfig, harvest, memory_bound

    model = ls.load_tiny(args.tiny) if args.tiny else ls.load(args.model)
    cfg = HarvestConfig(
        sites=args.sites, n_tokens=args.tokens, seq_len=args.seq_len, drop_first=args.drop_first,
        batch_size=args.batch_size, tokens_per_shard=args.shard_tokens, dtype=args.dtype, seed=args.seed, split=args.split,
    )  # fmt: skip
    print(f"{model}\nharvesting {cfg.sites} -> {args.out} ({cfg.n_shards} shards; buffers at most "
          f"{memory_bound(model, cfg) / 2**20:.1f} MiB)")  # fmt: skip
    store = harvest(model, cfg, args.out, overwrite=args.overwrite)
    print(store)
    return 0
