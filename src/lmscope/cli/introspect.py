"""``lmscope introspect``: the concept-injection experiment and its Golden-Gate positive control.

lmscope introspect --layers 6 10 14 18 --strengths 2 4 8 --trials 8 --out out/introspection
lmscope introspect --read word --golden-gate --layers 6 10 --strengths 0.25 0.5 1 --out out/gg
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmscope.cli.common import model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("introspect", help="inject concept vectors and ask the model whether it notices")
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf file or hub id (default: bundled)")
    p.add_argument("--tiny", default=None, help="use a tiny random model of this family (testing)")
    p.add_argument("--layers", type=int, nargs="+", default=[6, 10, 14, 18])
    p.add_argument("--strengths", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    p.add_argument("--concepts", nargs="+", default=None, help="default: the built-in list (concepts.json)")
    p.add_argument("--n-concepts", type=int, default=8)
    p.add_argument("--n-baseline", type=int, default=40)
    p.add_argument("--trials", type=int, default=8, help="injection trials per cell (plus as many controls)")
    p.add_argument("--read", choices=["last", "word"], default="last", help="read vectors at the last token or the word")
    p.add_argument("--inject-from", choices=["trial", "assistant", "generated"], default="trial")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampling at --temperature)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--golden-gate", action="store_true", help="also run the plain-generation positive control")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmscope.core.outputs import Report
    from lmscope.introspection import (
        IntrospectionConfig,
        concept_vectors,
        golden_gate,
        introspection_grid,
        load_concepts,
        pick_concepts,
    )

    model = model_from_args(args)
    cfg = IntrospectionConfig(
        layers=args.layers, strengths=args.strengths, concepts=args.concepts, n_concepts=args.n_concepts,
        n_baseline=args.n_baseline, n_trials=args.trials, read=args.read, inject_from=args.inject_from,
        max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, temperature=args.temperature, seed=args.seed,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    words = load_concepts()
    concepts = pick_concepts(cfg, words)
    vecs = concept_vectors(model, concepts, words.baseline[: cfg.n_baseline], layers=cfg.layers, read=cfg.read)
    res = introspection_grid(model, cfg, words=words, vectors=vecs, checkpoint=out / "checkpoint.json")
    res.write(out / "grid")
    print("layer strength detection identification false_positive")
    for (layer, s), r in sorted(res.rates.items()):
        print(f"{layer:5d} {s:8.1f} {r['detection']:9.2f} {r['identification']:14.2f} {r['false_positive']:14.2f}")
    if args.golden_gate:
        gg = golden_gate(model, vecs, words, layers=cfg.layers, strengths=cfg.strengths, max_new_tokens=args.max_new_tokens)
        rep = Report("Golden-Gate control: does injection steer plain generation?")
        rep.table("Concept mention rate answering 'Tell me about your day.'", ["layer", "strength", "mention", "baseline"],
                  [[r["layer"], r["strength"], r["mention_rate"], r["baseline_mention_rate"]] for r in gg.rows])  # fmt: skip
        step = max(1, len(gg.samples) // 40)
        rep.table("Samples", ["layer", "strength", "concept", "text"],
                  [[s["layer"], s["strength"], s["concept"], s["text"][:160]] for s in gg.samples[::step]])  # fmt: skip
        rep.write(out / "golden_gate", {"rows": gg.rows, "baseline": gg.baseline_mention, "samples": gg.samples})
        for r in gg.rows:
            print(f"golden gate layer {r['layer']} strength {r['strength']}: mention {r['mention_rate']:.2f} "
                  f"(baseline {r['baseline_mention_rate']:.2f})")  # fmt: skip
    print(f"report: {out}/grid/index.html")
    return 0
