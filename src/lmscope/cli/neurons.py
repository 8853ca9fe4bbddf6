"""``lmscope neurons record|top|correlate|ablate|scale``: the single-neuron workflow from a shell.

The built-in behaviour is "inside a Python string literal", labelled from the installed corpus.

    lmscope neurons correlate --layers 13-19 --out runs/corr
    lmscope neurons ablate --layer 16 --neurons 123 --out runs/ablate
    lmscope neurons scale --layer 16 --neurons 123 --out runs/scale
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from lmscope.cli.common import model_from_args


def _layers(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf file or hub id")
    p.add_argument("--tiny", default=None, help="use a tiny random model of this family (for trying the command)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--out", default=None, help="output folder (result.json, index.html, figures)")
    p.add_argument("--strings", choices=("all", "inline"), default="all",
                   help="label: inside any string literal, or only single-quoted ones (no docstrings)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("neurons", help="record, inspect, correlate, ablate and scale MLP neurons")
    s = p.add_subparsers(dest="neurons_command", metavar="STEP", required=True)
    r = s.add_parser("record", help="harvest mlp_post of some layers over the corpus into an activation store")
    _common(r)
    r.add_argument("--layers", type=_layers, required=True, help="e.g. 13-19 or 3,5")
    r.add_argument("--tokens", type=int, default=65536)
    r.set_defaults(func=run_record)
    t = s.add_parser("top", help="top-activating contexts of neurons from a recorded store")
    t.add_argument("--store", required=True)
    t.add_argument("--layer", type=int, required=True)
    t.add_argument("--neurons", type=int, nargs="+", required=True)
    t.add_argument("-k", type=int, default=10)
    t.add_argument("--model", default=None)
    t.add_argument("--tiny", default=None)
    t.set_defaults(func=run_top)
    c = s.add_parser("correlate", help="rank neurons by AUROC for 'inside a string literal' (held-out check)")
    _common(c)
    c.add_argument("--layers", type=_layers, required=True)
    c.add_argument("--train-windows", type=int, default=200)
    c.add_argument("--heldout-windows", type=int, default=100)
    c.add_argument("--top", type=int, default=10)
    c.set_defaults(func=run_correlate)
    for name, func, helptext in (("ablate", run_ablate, "zero/mean/resample ablation vs random-neuron controls"),
                                 ("scale", run_scale, "dose-response of scaling or setting neurons")):  # fmt: skip
        a = s.add_parser(name, help=helptext)
        _common(a)
        a.add_argument("--layer", type=int, required=True)
        a.add_argument("--neurons", type=int, nargs="+", required=True)
        a.add_argument("--windows", type=int, default=16, help="held-out windows to score on")
        a.add_argument("--controls", type=int, default=5, help="random-neuron control draws")
        a.add_argument("--score", choices=("strings", "all"), default="strings", help="positions scored")
        if name == "scale":
            a.add_argument("--values", type=float, nargs="+", default=[-2, -1, 0, 0.5, 1, 2, 4, 8])
            a.add_argument("--mode", choices=("scale", "set"), default="scale")
        a.set_defaults(func=func)


def _model(args: argparse.Namespace):
    return model_from_args(args)


def _write(args: argparse.Namespace, title: str, result: dict, report=None) -> None:
    print(json.dumps(result, indent=1, default=float)[:4000])
    if args.out:
        from lmscope.core.outputs import Report

        rep = report or Report(title)
        rep.write(args.out, result)
        print(f"wrote {Path(args.out) / 'index.html'}")


def run_record(args: argparse.Namespace) -> int:
    from lmscope.neurons import record

    if not args.out:
        raise ValueError("record needs --out (the store folder)")
    store = record(_model(args), args.layers, args.out, n_tokens=args.tokens, seq_len=args.seq_len)
    print(store)
    return 0


def run_top(args: argparse.Namespace) -> int:
    from lmscope.core.store import ActivationStore
    from lmscope.neurons import top_examples

    model = _model(args)
    store = ActivationStore(args.store)
    site = f"blocks.{args.layer}.mlp.hook_post"
    for neuron, exs in top_examples(store, site, args.neurons, tokenizer=model.tokenizer, k=args.k).items():
        print(f"neuron L{args.layer}.{neuron}")
        for e in exs:
            print(f"  {e.value:8.3f}  {e.highlighted()!r}")
    return 0


def run_correlate(args: argparse.Namespace) -> int:
    from lmscope.core.outputs import Report, new_figure
    from lmscope.neurons import correlate, string_windows

    model = _model(args)
    tq = args.strings == "all"
    tr = string_windows(model.tokenizer, n_windows=args.train_windows, seq_len=args.seq_len, split="train", triple_quoted=tq)
    ho = string_windows(model.tokenizer, n_windows=args.heldout_windows, seq_len=args.seq_len, split="heldout",
                        triple_quoted=tq)
    res = correlate(model, args.layers, tr.ids, tr.labels, ho.ids, ho.labels, top=args.top)
    rep = Report("Neurons correlated with 'inside a string literal'")
    rep.table("Candidates (ranked by |train AUROC - 0.5|)", ["layer", "neuron", "train AUROC", "train r", "held-out AUROC",
              "held-out r"], [[c.layer, c.neuron, c.train_auroc, c.train_r, c.heldout_auroc, c.heldout_r]
                              for c in res.candidates])  # fmt: skip
    fig, ax = new_figure(figsize=(6, 3))
    ax.hist(res.train_auroc.numpy(), bins=100)
    ax.set_xlabel("train AUROC (all neurons)")
    rep.figure("auroc_hist", fig, "AUROC of every neuron on the train split")
    result = {"layers": args.layers, "strings": args.strings, "n_train_tokens": res.n_train, "n_heldout_tokens": res.n_heldout,
              "positive_rate": res.positive_rate, "candidates": [asdict(c) for c in res.candidates]}  # fmt: skip
    _write(args, "correlate", result, rep)
    return 0


def _eval_windows(args: argparse.Namespace, model):
    from lmscope.neurons import string_windows

    ho = string_windows(model.tokenizer, n_windows=args.windows, seq_len=args.seq_len, split="heldout", seed=1,
                        triple_quoted=args.strings == "all")
    ref = string_windows(model.tokenizer, n_windows=32, seq_len=args.seq_len, split="train", seed=1)
    mask = ho.labels if args.score == "strings" else None
    return ho, ref, mask


def _summ(effects) -> dict:
    import statistics

    out = {}
    for field in ("kl", "dlogp", "top1_change"):
        vals = [getattr(e, field) for e in effects]
        out[field] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}
    return out


def run_ablate(args: argparse.Namespace) -> int:
    from lmscope.core.outputs import Report
    from lmscope.neurons import ablate

    model = _model(args)
    ho, ref, mask = _eval_windows(args, model)
    res = ablate(model, args.layer, args.neurons, ho.ids, reference=ref.ids, score_mask=mask, n_controls=args.controls)
    rows, result = [], {"layer": args.layer, "neurons": args.neurons, "scored": args.score, "modes": {}}
    for mode, eff in res.effects.items():
        ctl = _summ(res.controls[mode])
        result["modes"][mode] = {"neurons": asdict(eff), "random_controls": ctl}
        rows.append([mode, eff.kl, ctl["kl"]["mean"], eff.dlogp, ctl["dlogp"]["mean"], eff.top1_change,
                     ctl["top1_change"]["mean"]])  # fmt: skip
    rep = Report(f"Ablating L{args.layer} neurons {args.neurons}")
    rep.table("Effect vs random-neuron controls (mean of controls)", ["mode", "KL", "KL ctl", "dlogp", "dlogp ctl",
              "top-1 change", "top-1 ctl"], rows)  # fmt: skip
    _write(args, "ablate", result, rep)
    return 0


def run_scale(args: argparse.Namespace) -> int:
    from lmscope.core.outputs import Report
    from lmscope.neurons import dose_figure, dose_response

    model = _model(args)
    ho, _, mask = _eval_windows(args, model)
    quote = [i for i in range(len(model.tokenizer)) if any(q in model.tokenizer.decode([i]) for q in ("'", '"'))]
    res = dose_response(model, args.layer, args.neurons, ho.ids, values=tuple(args.values), mode=args.mode,
                        score_mask=mask, token_set=quote, n_controls=max(1, min(args.controls, 3)))  # fmt: skip
    rep = Report(f"Dose-response of L{args.layer} neurons {args.neurons}")
    rep.figure("dose_quote_prob", dose_figure(res, "token_set_prob"), "probability of a quote token next")
    rep.figure("dose_kl", dose_figure(res, "kl"), "KL(clean || edited)")
    result = {"layer": args.layer, "neurons": args.neurons, "mode": args.mode, "values": res.values,
              "scored": args.score, "n_quote_tokens": len(quote), "effects": [asdict(e) for e in res.effects],
              "controls": [[asdict(e) for e in c] for c in res.controls]}  # fmt: skip
    _write(args, "scale", result, rep)
    return 0
