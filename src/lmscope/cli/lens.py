"""``lmscope lens``: the logit lens (or a trained tuned lens) from the shell.

    lmscope lens "The capital of Poland is" --target " Warsaw" --out outputs/lens
    lmscope lens --prompts facts.jsonl --out outputs/lens          # records {"prompt", "target"}
    lmscope lens --relation country_capital --out outputs/lens     # built-in fact table
    lmscope lens --demo --out outputs/demo-lens                    # capital prompts, emergence layers
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from lmscope.cli.common import model_from_args

# (country, capital): the demo keeps the ones the model answers correctly at its last layer.
DEMO_CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", " Paris"), ("Germany", " Berlin"), ("Italy", " Rome"), ("Spain", " Madrid"), ("Japan", " Tokyo"),
    ("Russia", " Moscow"), ("Greece", " Athens"), ("Poland", " Warsaw"), ("Egypt", " Cairo"), ("Canada", " Ottawa"),
)  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lens", help="logit lens: decode every layer of the residual stream", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("prompt", nargs="*", help="prompt(s) to decode")
    p.add_argument("--target", default=None, help='target token for rank/emergence, e.g. " Warsaw" (one token)')
    p.add_argument("--prompts", default=None, metavar="FILE", help='JSONL of {"prompt": ..., "target": ...} records')
    p.add_argument("--relation", default=None, help="built-in fact table, e.g. country_capital (relations/*.jsonl)")
    p.add_argument("--demo", action="store_true", help="run the built-in capital prompts and print emergence layers")
    p.add_argument("--only-correct", action="store_true", help="keep only prompts whose target is the model's top-1")
    p.add_argument("--limit", type=int, default=None, help="use at most this many prompts")
    p.add_argument("--site", default="resid_post", help="residual-basis kind to decode (resid_pre/mid/post, attn_out, mlp_out)")
    p.add_argument("--tuned", default=None, metavar="FILE", help="decode with a trained tuned lens (.safetensors)")
    p.add_argument("-k", type=int, default=5, help="top-k tokens to keep")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf or hub id (default: bundled)")
    p.add_argument("--tiny", default=None, help="use a tiny random model of this family (tests)")
    p.add_argument("--out", default=None, help="folder for result.json, PNG figures and index.html")
    p.set_defaults(func=run)
    from lmscope.cli import tuned_lens

    tuned_lens.register(sub)


def _load_model(args: argparse.Namespace):
    return model_from_args(args)


def _records(args: argparse.Namespace, model: Any) -> tuple[list[str], list[str] | None, str]:
    """Prompts, targets (or None) and a note on where they came from."""
    if args.demo:
        return [f"The capital of {c} is" for c, _ in DEMO_CAPITALS], [t for _, t in DEMO_CAPITALS], "demo capitals"
    if args.prompts:
        from lmscope.core.datasets import read_jsonl

        recs = read_jsonl(args.prompts)
        if not recs:
            raise ValueError(f"{args.prompts} has no records")
        for n, r in enumerate(recs):
            if "prompt" not in r:
                raise ValueError(f"{args.prompts}: record {n} has no 'prompt' key (keys: {sorted(r)})")
        prompts = [r["prompt"] for r in recs]
        has = [r.get("target") is not None for r in recs]
        if any(has) and not all(has):
            raise ValueError(f"{args.prompts}: give a 'target' for every record or for none")
        return prompts, ([r["target"] for r in recs] if all(has) else None), args.prompts
    if args.relation:
        from lmscope.core.datasets import load_json, load_jsonl

        templates = load_json("relations/templates.json")
        if args.relation not in templates:
            raise ValueError(f"unknown relation {args.relation!r}; built-in: {sorted(templates)}")
        prompts, targets = [], []
        for r in load_jsonl(f"relations/{args.relation}.jsonl"):
            target = " " + r["object"]
            if len(model.tokenizer(target, add_special_tokens=False)["input_ids"]) == 1:
                prompts.append(templates[args.relation]["prompt"].format(r["subject"]))
                targets.append(target)
        return prompts, targets, f"relation {args.relation} (single-token objects)"
    if not args.prompt:
        raise ValueError("give a prompt, --prompts FILE, --relation NAME or --demo")
    return list(args.prompt), (None if args.target is None else [args.target] * len(args.prompt)), "command line"


def print_table(header: list[str], rows: list[list[Any]], out=sys.stdout) -> None:
    """A plain fixed-width table."""
    def cell(c: Any) -> str:
        return (f"{c:.4g}" if isinstance(c, float) else str(c)).replace("\n", "\u23ce")

    cells = [[str(h) for h in header]] + [[cell(c) for c in r] for r in rows]
    widths = [min(44, max(len(r[i]) for r in cells)) for i in range(len(header))]
    for n, r in enumerate(cells):
        print("  ".join(c[:44].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """ "all", "0-29", "0-29:3", "4,8,12" -> layer list (checked against n_layers)."""
    if spec is None or spec == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in spec.split(","):
        rng, _, step = part.partition(":")
        lo, dash, hi = rng.partition("-")
        if dash:
            out.extend(range(int(lo), int(hi) + 1, int(step or 1)))
        else:
            out.append(int(rng))
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range; the model has {n_layers} layers")
    return out


def run(args: argparse.Namespace) -> int:
    from lmscope.lenses import logit_lens

    t0 = time.time()
    model = _load_model(args)
    prompts, targets, source = _records(args, model)
    if args.limit is not None:
        prompts, targets = prompts[: args.limit], (None if targets is None else targets[: args.limit])
    translator, lens_name = None, "logit"
    if args.tuned:
        from lmscope.lenses.tuned_lens import TunedLens

        tuned = TunedLens.load(args.tuned, model)
        translator, lens_name = tuned.translate, "tuned"
    res = logit_lens(model, prompts, targets, sites=args.site, k=args.k, chat=args.chat, translator=translator,
                     lens_name=lens_name)  # fmt: skip
    if targets is not None and (args.only_correct or args.demo):
        keep = [i for i, ok in enumerate(res.model_correct()) if ok]
        print(f"{len(keep)} of {len(prompts)} prompts ({source}) are answered correctly at the last layer; keeping those")
        if not keep:
            raise ValueError("the model answers none of the prompts correctly; nothing to show")
        res = res.select(keep)
        prompts = res.prompts
    if len(prompts) == 1:
        print(f"{lens_name} lens on {model.model_id}: {prompts[0]!r} (last token {res.tokens(0)[-1]!r})")
        print_table(*res.layer_table(0))
    else:
        print(f"{lens_name} lens on {model.model_id}: {len(prompts)} prompts from {source}")
        print_table(*res.summary_table())
        if targets is not None:
            _print_emergence_summary(res)
    if args.out:
        folder = res.save(args.out)
        print(f"wrote {folder}/index.html, result.json and figures")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


def _print_emergence_summary(res: Any) -> None:
    layers = [e for e in res.emergence() if e is not None]
    if layers:
        layers.sort()
        median = layers[len(layers) // 2]
        print(f"target becomes top-1 and stays from layer {min(layers)}..{max(layers)} (median {median}) of "
              f"{len(res.sites)} decoded sites, for {len(layers)} of {len(res.prompts)} prompts")  # fmt: skip
