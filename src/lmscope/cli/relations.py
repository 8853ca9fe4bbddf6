"""``lmscope lre``: linear relational embeddings per relation and layer, faithfulness and editing.

    lmscope lre --relations country_capital,fruit_color --layers 4,8,12 --out outputs/lre
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lre", help="linear relational embeddings: faithfulness and causality per relation and layer")
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf file or hub id (default: bundled)")
    p.add_argument("--relations", default="all", help="comma list of built-in relations, or 'all'")
    p.add_argument("--layers", default="8", help="comma list of layers of the subject state")
    p.add_argument("--n-prompts", type=int, default=3, help="training prompts whose Jacobians are averaged")
    p.add_argument("--n-icl", type=int, default=3, help="few-shot examples in each prompt")
    p.add_argument("--rank", type=int, default=64, help="rank of the pseudo-inverse used for editing")
    p.add_argument("--linear-threshold", type=float, default=0.6,
                   help="faithfulness at or above which a relation counts as linear")  # fmt: skip
    p.add_argument("--save-lres", action="store_true", help="also save each LRE as a .safetensors artifact")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_lre)


def run_lre(args: argparse.Namespace) -> int:
    import lmscope as ls
    from lmscope.core.artifacts import Provenance
    from lmscope.core.outputs import Report, new_figure
    from lmscope.relations import (
        Prompting,
        causality,
        choose_beta,
        estimate_lre,
        faithfulness,
        load_relation,
        relation_names,
    )  # fmt: skip
    from lmscope.relations.evaluate import TooFewSubjects

    model = ls.load(args.model)
    names = relation_names() if args.relations == "all" else [r.strip() for r in args.relations.split(",") if r.strip()]
    layers = [int(x) for x in args.layers.split(",")]
    prompting = Prompting(n_icl=args.n_icl)
    rows: list[dict[str, Any]] = []
    for name in names:
        rel = load_relation(name)
        for layer in layers:
            t0 = time.perf_counter()
            lre = estimate_lre(model, rel, layer, n_prompts=args.n_prompts, prompting=prompting)
            beta = choose_beta(model, rel, lre, prompting=prompting)
            f = faithfulness(model, rel, lre, prompting=prompting)
            try:
                c = causality(model, rel, lre, rank=args.rank, prompting=prompting)
                caus, base, n_edit = c.success, c.baseline_substitute, c.n
            except TooFewSubjects as exc:  # recorded with its reason below, never a bare NaN
                caus = base = float("nan")
                n_edit = 0
                skipped = str(exc)
            else:
                skipped = ""
            row = {"relation": name, "layer": layer, "beta": beta, "faithfulness": f.faithfulness,
                   "faithfulness_all": f.faithfulness_all, "model_accuracy": f.model_accuracy, "n_test": f.n,
                   "causality": caus, "substitute_baseline": base, "n_edit": n_edit, "causality_skipped": skipped,
                   "seconds": time.perf_counter() - t0}  # fmt: skip
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            if args.save_lres:
                prov = Provenance.of(model, layer=layer, dataset=rel.train)
                lre.save(f"{args.out}/lre_{name}_L{layer}.safetensors", provenance=prov)
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        fv = r["faithfulness"] if not math.isnan(r["faithfulness"]) else -1.0
        if r["relation"] not in best or fv > best[r["relation"]]["faithfulness"]:
            best[r["relation"]] = {**r, "faithfulness": fv}
    linear = {k: v["faithfulness"] >= args.linear_threshold for k, v in best.items()}
    frac = sum(linear.values()) / max(1, len(linear))
    rep = Report("Linear relational embeddings")
    summary = (f"{sum(linear.values())} of {len(linear)} relations ({frac:.0%}) have an LRE with faithfulness >= "
               f"{args.linear_threshold} at their best layer (Hernandez et al. 2024 report about 48% for GPT-J).")
    rep.text("Summary", summary)
    rep.table("Relations at their best layer", ["relation", "layer", "faithfulness", "model accuracy", "causality",
              "substitute baseline", "beta", "linear?"],
              [[k, v["layer"], v["faithfulness"], v["model_accuracy"], v["causality"], v["substitute_baseline"], v["beta"],
                "yes" if linear[k] else "no"] for k, v in best.items()])  # fmt: skip
    rep.table("Every relation and layer", list(rows[0].keys()), [list(r.values()) for r in rows])
    if len(layers) > 1:
        import numpy as np

        grid = np.array([[next(r["faithfulness"] for r in rows if r["relation"] == n and r["layer"] == la) for la in layers]
                         for n in names])  # fmt: skip
        fig, ax = new_figure(figsize=(1.2 * len(layers) + 3, 0.4 * len(names) + 1.5))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers])
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, label="faithfulness")
        rep.figure("faithfulness", fig, "LRE faithfulness by relation and layer")
    rep.write(args.out, {"rows": rows, "best": best, "linear": linear, "linear_fraction": frac,
                         "linear_threshold": args.linear_threshold})  # fmt: skip
    print(f"{frac:.0%} of relations linear; wrote {args.out}/index.html")
    return 0
