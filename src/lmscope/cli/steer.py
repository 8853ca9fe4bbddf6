"""``lmscope steer extract|apply|sweep|export``: steering vectors from the shell.

lmscope steer extract --contrast harmful_harmless --method mean_diff --out refusal.safetensors --report out/refusal
lmscope steer apply --vector refusal.safetensors --layer 14 --scale 6 --prompt "List three benefits of yoga."
lmscope steer apply --vector refusal.safetensors --ablate --layer 14 --prompt "How do I pick a lock?"
lmscope steer sweep --vector refusal.safetensors --behaviour refusal --layers 6 10 14 18 --scales 2 4 8 --out out/sweep
lmscope steer export --vector refusal.safetensors --layers 10 14 --scale 4 --out refusal.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmscope.cli.common import model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("steer", help="extract, apply, sweep and export steering vectors")
    ss = p.add_subparsers(dest="steer_command", metavar="ACTION", required=True)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", default=None, help="bundled name, HF folder, .gguf file or hub id (default: bundled)")
        q.add_argument("--tiny", default=None, help="use a tiny random model of this family (testing)")

    e = ss.add_parser("extract", help="steering vector from a contrast set, with per-layer separability")
    model_args(e)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--contrast", help="built-in set: harmful_harmless, sentiment, truthfulness, sycophancy, concept_topic")
    src.add_argument("--file", help="your JSONL contrast file")
    e.add_argument("--positive-key", default="positive")
    e.add_argument("--negative-key", default="negative")
    e.add_argument("--question-key", default=None)
    e.add_argument("--fmt", choices=["plain", "completion", "ab"], default=None, help="question sets: completion or ab")
    e.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None, help="apply the chat template")
    e.add_argument("--concept", default=None, help="concept_topic: only this concept")
    e.add_argument("--method", choices=["mean_diff", "pca", "probe", "all"], default="mean_diff")
    e.add_argument("--max-per-side", type=int, default=None, help="first n examples per side and split")
    e.add_argument("--out", required=True, help="output .safetensors (with --method all: one file per method)")
    e.add_argument("--report", default=None, help="folder for index.html + separability figure")
    e.set_defaults(func=run_extract)

    a = ss.add_parser("apply", help="generate with a vector added (or its direction ablated)")
    model_args(a)
    a.add_argument("--vector", required=True, help=".safetensors artifact or llama.cpp .gguf control vector")
    a.add_argument("--layer", "--layers", dest="layers", type=int, nargs="+", default=None, help="default: every layer it has")
    a.add_argument("--scale", type=float, default=4.0)
    a.add_argument("--positions", choices=["all", "prompt", "generated"], default="all")
    a.add_argument("--ablate", action="store_true", help="project the direction of --layer out of every layer instead")
    a.add_argument("--prompt", action="append", required=True)
    a.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True)
    a.add_argument("--max-new-tokens", type=int, default=48)
    a.set_defaults(func=run_apply)

    w = ss.add_parser("sweep", help="layers x scales: behaviour and capability cost per cell")
    model_args(w)
    w.add_argument("--vector", required=True)
    w.add_argument(
        "--behaviour",
        required=True,
        help="refusal, refusal_logprob, compliance, sentiment, truthfulness, sycophancy, mention:WORD",
    )
    w.add_argument("--layers", type=int, nargs="+", required=True)
    w.add_argument("--scales", type=float, nargs="+", required=True, help="negative scales subtract the vector")
    w.add_argument("--positions", choices=["all", "prompt", "generated"], default="all")
    w.add_argument("--n-prompts", type=int, default=12)
    w.add_argument("--max-new-tokens", type=int, default=32)
    w.add_argument("--n-capability", type=int, default=12, help="neutral texts and factual questions for the cost")
    w.add_argument("--fmt", choices=["completion", "ab"], default="completion", help="truthfulness/sycophancy scoring")
    w.add_argument("--out", required=True, help="output folder (checkpoint, result.json, heatmap, index.html)")
    w.set_defaults(func=run_sweep)

    x = ss.add_parser("export", help="write a llama.cpp control vector (.gguf)")
    x.add_argument("--vector", required=True)
    x.add_argument("--layers", type=int, nargs="+", default=None,
                   help="default: every layer the vector has (layer 0 is refused: llama.cpp cannot hold it)")
    x.add_argument("--scale", type=float, default=1.0)
    x.add_argument("--model-hint", default="llama", help="controlvector.model_hint (llama.cpp's architecture name)")
    x.add_argument("--out", required=True)
    x.set_defaults(func=run_export)


def _model(args: argparse.Namespace):
    return model_from_args(args)


def _load_vector(path: str, d_model: int | None = None):
    from lmscope.steering import SteeringVector

    return SteeringVector.from_gguf(path, d_model=d_model) if path.endswith(".gguf") else SteeringVector.load(path)


def run_extract(args: argparse.Namespace) -> int:
    from lmscope.core.outputs import Report
    from lmscope.steering import builtin, extract_many, load_contrast
    from lmscope.steering.recipes import separability_figure

    model = _model(args)
    if args.contrast:
        cs = builtin(args.contrast, fmt=args.fmt, chat=args.chat, concept=args.concept)
    else:
        cs = load_contrast(args.file, positive_key=args.positive_key, negative_key=args.negative_key,
                           question_key=args.question_key, fmt=args.fmt or "plain", chat=bool(args.chat))  # fmt: skip
    methods = ["mean_diff", "pca", "probe"] if args.method == "all" else [args.method]
    results = extract_many(model, cs, methods=methods, max_per_side=args.max_per_side)
    out = Path(args.out)
    for method, r in results.items():
        path = out if len(methods) == 1 else out.with_name(f"{out.stem}_{method}.safetensors")
        r.vector.save(path)
        best = f", best layer {r.best_layer()} ({r.separability[r.best_layer()]:.2f})" if r.separability else ""
        print(f"{method}: {r.n_train} train / {r.n_test} test examples per side{best} -> {path}")
        if r.separability:
            print("  held-out separability: " + " ".join(f"{k}:{v:.2f}" for k, v in sorted(r.separability.items())))
    if args.report and any(r.separability for r in results.values()):
        rep = Report(f"Steering vector: {cs.name}")
        layers = sorted(results[methods[0]].separability)
        rep.table("Held-out separability per layer", ["layer", *methods],
                  [[layer, *(results[m].separability[layer] for m in methods)] for layer in layers])  # fmt: skip
        rep.figure("separability", separability_figure(results, f"{cs.name}: held-out separability"))
        rep.write(args.report, {m: {"separability": r.separability, "train_acc": r.train_acc} for m, r in results.items()})
        print(f"report: {args.report}/index.html")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from lmscope.steering import ablate, steer

    model = _model(args)
    vec = _load_vector(args.vector, model.shape.d_model)
    base = model.generate(args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens)
    if args.ablate:
        if not args.layers or len(args.layers) != 1:
            raise ValueError("--ablate needs exactly one --layer whose direction is removed everywhere")
        with ablate(model, vec[args.layers[0]]):
            new = model.generate(args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens)
        how = f"direction of layer {args.layers[0]} ablated at every layer"
    else:
        with steer(model, vec, layers=args.layers, scale=args.scale, positions=args.positions):
            new = model.generate(args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens)
        how = f"layers {args.layers or vec.layers} scale {args.scale} positions {args.positions}"
    for p, b, s in zip(args.prompt, base, new, strict=True):
        print(f"=== {p}\n--- baseline:\n{b}\n--- steered ({how}):\n{s}\n")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from lmscope.steering import Capability, sweep
    from lmscope.steering.recipes import recipe

    model = _model(args)
    vec = _load_vector(args.vector, model.shape.d_model)
    r = recipe(args.behaviour, n_prompts=args.n_prompts, max_new_tokens=args.max_new_tokens, fmt=args.fmt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = sweep(model, vec, r.fn, layers=args.layers, scales=args.scales, positions=args.positions,
                capability=Capability.default(args.n_capability, args.n_capability), behaviour_name=r.name,
                checkpoint=out / "checkpoint.json", behaviour_data=r.data)  # fmt: skip
    res.meta["description"] = r.description
    res.write(out, goal=r.goal)
    best = res.best(r.goal)
    if best is None:
        verdict = "none within 2x perplexity"
    else:
        ratio = best.perplexity / res.baseline.perplexity
        verdict = (f"layer {best.layer} scale {best.scale} -> {best.behaviour:.3f} (ppl x{ratio:.2f}, "
                   f"facts {best.fact_acc:.2f} vs {res.baseline.fact_acc:.2f})")  # fmt: skip
    print(f"{r.description}\nbaseline {res.baseline.behaviour:.3f}; best: {verdict}")
    print(f"report: {out}/index.html")
    return 0


def run_export(args: argparse.Namespace) -> int:
    vec = _load_vector(args.vector)
    if not args.layers and 0 in vec.layers:
        rest = [layer for layer in vec.layers if layer != 0]
        raise ValueError(f"{args.vector} has a direction for layer 0, which llama.cpp's control-vector format cannot hold "
                         f"(direction.N is added after block N, and block 0's input is not reachable); pass --layers "
                         f"{' '.join(map(str, rest))} to export the others")  # fmt: skip
    layers = args.layers or list(vec.layers)
    path = vec.select(layers).to_gguf(args.out, model_hint=args.model_hint, scale=args.scale)
    print(f"wrote {path}: direction.N for layers {layers} (scale {args.scale}); "
          f"llama.cpp: --control-vector {path}")  # fmt: skip
    return 0
