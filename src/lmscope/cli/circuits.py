"""``lmscope patch | attribute | circuit``: activation patching, attribution patching, circuit discovery.

Each command builds a task (IOI, greater-than or capital recall), keeps the examples the model gets
right, runs its experiment and writes ``result.json``, PNG figures and ``index.html`` to ``--out``.

    lmscope patch --task ioi --n 40 --max-examples 8 --out outputs/patch-ioi
    lmscope attribute --task ioi --max-examples 8 --exact-edges 64 --out outputs/attr-ioi
    lmscope circuit --task ioi --max-examples 8 --method acdc-nodes --ablation mean --out outputs/circuit-ioi
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

VARIANTS = ("resid", "layers", "heads", "head_pos")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="bundled name, HF folder, .gguf file or hub id (default: bundled)")
    p.add_argument("--task", default="ioi", choices=("ioi", "greater_than", "capital"))
    p.add_argument("--n", type=int, default=40, help="examples to generate before filtering")
    p.add_argument("--max-examples", type=int, default=8, help="examples used after keeping the ones the model gets right")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copies", type=int, default=16, help="patches (or masks) per batched forward")
    p.add_argument("--out", required=True, help="output folder")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch", help="activation patching sweeps with heatmaps")
    _common(p)
    p.add_argument("--variants", default="resid,layers,heads", help=f"comma list of {','.join(VARIANTS)}")
    p.add_argument("--direction", default="denoise", choices=("denoise", "noise"))
    p.set_defaults(func=run_patch)

    p = sub.add_parser("attribute", help="attribution patching (nodes and edges) vs activation patching")
    _common(p)
    p.add_argument("--variants", default="layers,heads", help=f"comma list of {','.join(VARIANTS)} to compare")
    p.add_argument("--exact-edges", type=int, default=32,
                   help="edges patched exactly to check edge attribution (half top, half random)")  # fmt: skip
    p.set_defaults(func=run_attribute)

    p = sub.add_parser("circuit", help="circuit discovery by pruning, with necessity and sufficiency")
    _common(p)
    p.add_argument("--method", default="acdc-nodes", choices=("acdc-nodes", "acdc-edges", "mask-nodes", "mask-edges"))
    p.add_argument("--ablation", default="mean", choices=("mean", "zero", "resample", "corrupt"))
    p.add_argument("--threshold", type=float, default=0.02, help="ACDC: normalised metric change below which a node/edge goes")
    p.add_argument("--candidates", type=int, default=200, help="acdc-edges: search only the top edges by edge attribution")
    p.add_argument("--sparsity", type=float, default=0.1, help="learned masks: L1 weight")
    p.add_argument("--steps", type=int, default=40, help="learned masks: optimisation steps")
    p.add_argument("--n-random", type=int, default=10, help="random circuits of the same size as controls")
    p.set_defaults(func=run_circuit)


def _setup(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    import lmscope as ls
    from lmscope.circuits import TASKS, filter_correct

    model = ls.load(args.model)
    task = TASKS[args.task](model, n=args.n, seed=args.seed)
    kept = filter_correct(model, task)
    info = {"task": args.task, "generated": task.n, "accuracy": kept.accuracy, "kept": kept.task.n,
            "clean_metric": kept.clean_metric, "corrupt_metric": kept.corrupt_metric, "metric": task.kind}  # fmt: skip
    sub = kept.task.subset(range(min(args.max_examples, kept.task.n)))
    info["used"] = sub.n
    info["example_clean"], info["example_corrupt"] = sub.clean[0], sub.corrupt[0]
    print(f"{args.task}: model right on {kept.accuracy:.0%} of {task.n}; using {sub.n} examples", flush=True)
    return model, sub, info


def _grid(model: Any, task: Any, variant: str, **kw: Any) -> Any:
    from lmscope.circuits import patching as P

    fn = {"resid": P.resid_by_layer_pos, "layers": P.layer_outputs, "heads": P.heads, "head_pos": P.head_by_pos}[variant]
    return fn(model, task, **kw)


def _variants(text: str) -> list[str]:
    out = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in out if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    return out


def run_patch(args: argparse.Namespace) -> int:
    from lmscope.circuits import heatmap
    from lmscope.core.outputs import Report

    model, task, info = _setup(args)
    rep = Report(f"Activation patching: {args.task}")
    rep.table("Task", ["key", "value"], [[k, v] for k, v in info.items()])
    result: dict[str, Any] = {"task": info, "sweeps": {}}
    for v in _variants(args.variants):
        grid = _grid(model, task, v, copies=args.copies, direction=args.direction)
        r = grid.result
        print(f"{v}: {len(r.specs)} patches in {r.forwards} forwards, {r.seconds:.1f} s", flush=True)
        result["sweeps"][v] = {"values": grid.values.tolist(), "rows": grid.rows, "cols": grid.cols, "seconds": r.seconds,
                               "forwards": r.forwards, "clean": r.clean, "corrupt": r.corrupt}  # fmt: skip
        top = grid.values.flatten().abs().topk(min(5, grid.values.numel())).indices.tolist()
        nc = grid.values.shape[1]
        rep.table(f"{grid.title}: strongest cells", ["row", "col", "normalised"],
                  [[grid.rows[i // nc], grid.cols[i % nc], float(grid.values.flatten()[i])] for i in top])  # fmt: skip
        rep.figure(f"patch_{v}", heatmap(grid), f"{grid.title} ({args.direction}; 1 = clean behaviour restored)")
    rep.write(args.out, result)
    print(f"wrote {args.out}/index.html")
    return 0


def run_attribute(args: argparse.Namespace) -> int:
    import torch

    from lmscope.circuits import correlation, edge_attribution, edge_patch_exact, heatmap, node_attribution
    from lmscope.circuits.patching import PatchGrid
    from lmscope.core.outputs import Report, new_figure

    model, task, info = _setup(args)
    clean, corrupt = task.batches(model)
    rep = Report(f"Attribution patching: {args.task}")
    result: dict[str, Any] = {"task": info, "nodes": {}}
    for v in _variants(args.variants):
        grid = _grid(model, task, v, copies=args.copies)
        t0 = time.perf_counter()
        attr = node_attribution(model, clean, corrupt, grid.result.specs, task.metric)
        t_attr = time.perf_counter() - t0
        corr = correlation(attr.normalized, grid.result.normalized)
        result["nodes"][v] = {"correlation": corr, "attribution": attr.normalized.tolist(),
                              "patching": grid.values.flatten().tolist(),
                              "seconds_attribution": t_attr, "seconds_patching": grid.result.seconds}  # fmt: skip
        print(f"{v}: attribution vs activation patching r = {corr:.3f}", flush=True)
        agrid = PatchGrid(attr.normalized.reshape(grid.values.shape), grid.rows, grid.cols, attr, f"attribution: {grid.title}")
        rep.figure(f"attr_{v}", heatmap(agrid), f"attribution patching, {grid.title} (r = {corr:.3f} with activation patching)")
    eap = edge_attribution(model, task)
    g = eap.graph
    valid = g.valid()
    k = max(2, args.exact_edges)
    flat = eap.scores.nan_to_num(0).abs().flatten()
    top = flat.topk(k // 2).indices.tolist()
    pool = [i for i in valid.flatten().nonzero().flatten().tolist() if i not in set(top)]
    rnd = random.Random(args.seed).sample(pool, min(len(pool), k - len(top)))
    edges = [(i // g.n_readers, i % g.n_readers) for i in top + rnd]
    exact = edge_patch_exact(model, task, edges, copies=args.copies)
    est = torch.stack([eap.scores[w, r] for w, r in edges])
    result["edges"] = {"n_edges": int(valid.sum()), "top": eap.top(20), "checked": len(edges),
                       "correlation": correlation(est, exact), "correlation_top": correlation(est[: len(top)], exact[: len(top)]),
                       "correlation_random": correlation(est[len(top):], exact[len(top):]),
                       "pairs": [[g.writers[w], g.readers[r], float(a), float(b)]
                                 for (w, r), a, b in zip(edges, est, exact, strict=True)]}  # fmt: skip
    print(f"edges: EAP vs exact edge patching r = {result['edges']['correlation']:.3f} on {len(edges)} edges", flush=True)
    fig, ax = new_figure(figsize=(5, 5))
    ax.scatter(exact.numpy(), est.numpy(), s=10)
    ax.set_xlabel("exact edge patch (metric change)")
    ax.set_ylabel("edge attribution estimate")
    rep.figure("eap_vs_exact", fig, f"edge attribution vs exact edge patching (r = {result['edges']['correlation']:.3f})")
    rep.table("Top edges by attribution", ["writer", "reader", "normalised score"], [list(t) for t in eap.top(20)])
    rep.table("Task", ["key", "value"], [[k2, v2] for k2, v2 in info.items()])
    rep.write(args.out, result)
    print(f"wrote {args.out}/index.html")
    return 0


def run_circuit(args: argparse.Namespace) -> int:
    import torch

    from lmscope.circuits import acdc, edge_attribution, faithfulness_curve, learned_mask, necessity_sufficiency, setup
    from lmscope.core.artifacts import Provenance
    from lmscope.core.outputs import Report, new_figure

    model, task, info = _setup(args)
    s = setup(model, task, ablation=args.ablation, seed=args.seed)
    t0 = time.perf_counter()
    level = "edges" if args.method.endswith("edges") else "nodes"
    if args.method == "acdc-nodes":
        circ = acdc(model, task, level="nodes", threshold=args.threshold, prepared=s, copies=args.copies, progress=print)
    elif args.method == "acdc-edges":
        eap = edge_attribution(model, task)
        flat = eap.scores.abs().nan_to_num(0).flatten()
        cand = torch.zeros(flat.numel(), dtype=torch.bool)
        cand[flat.topk(min(args.candidates, int(s.valid.sum()))).indices] = True
        circ = acdc(model, task, level="edges", threshold=args.threshold, prepared=s, copies=args.copies,
                    candidates=cand.reshape(s.valid.shape), progress=print)  # fmt: skip
    else:
        circ = learned_mask(model, task, level=level, sparsity=args.sparsity, steps=args.steps, prepared=s, progress=print)
    seconds = time.perf_counter() - t0
    summary = circ.summary()
    print(summary, flush=True)
    ns = necessity_sufficiency(model, task, circ, level=level, prepared=s, n_random=args.n_random, seed=args.seed)
    print(ns.to_json(), flush=True)
    if level == "nodes":
        ranking = circ.scores.nan_to_num(-1.0).max(1).values
        total = s.graph.n_writers - 1
        points = sorted({0, 5, 10, 20, 40, 80, 160, total, len(circ.nodes)} & set(range(total + 1)))
    else:
        ranking = circ.scores.nan_to_num(-1.0) + circ.kept.float() * 10  # kept edges first
        total = int(s.valid.sum())
        points = sorted({0, 10, 30, 100, 300, 1000, total, int(circ.kept.sum())} & set(range(total + 1)))
    curve = faithfulness_curve(s, ranking, points, level=level)
    out = circ.save(f"{args.out}/circuit.safetensors", provenance=Provenance.of(model, dataset=task.clean, method=args.method))
    rep = Report(f"Circuit discovery: {args.task} ({args.method})")
    rep.table("Task", ["key", "value"], [[k, v] for k, v in info.items()])
    rep.table("Circuit", ["key", "value"], [[k, v] for k, v in summary.items()] + [["seconds", seconds]])
    nsj = ns.to_json()
    rep.table("Necessity / sufficiency (fractions of the clean metric)", ["", "circuit", "random mean", "random std"], [
        ["necessity (circuit ablated)", nsj["necessity"], nsj["random_necessity_mean"], nsj["random_necessity_std"]],
        ["sufficiency (rest ablated)", nsj["sufficiency"], nsj["random_sufficiency_mean"], nsj["random_sufficiency_std"]],
        ["everything ablated", nsj["ablated_all_fraction"], "", ""]])  # fmt: skip
    rep.figure("circuit", circ.draw(), "the circuit (nodes: heads red, MLPs green; edges to readers)")
    fig, ax = new_figure(figsize=(5, 3.5))
    ax.plot(curve.kept, curve.faithfulness.numpy(), marker="o")
    ax.set_xscale("symlog")
    ax.set_xlabel(f"{level} kept (top by score)")
    ax.set_ylabel("metric recovered (normalised)")
    rep.figure("faithfulness", fig, "faithfulness curve")
    rep.text("Nodes", ", ".join(circ.nodes) or "(none)")
    rep.write(args.out, {"task": info, "circuit": circ.to_json(), "seconds": seconds, "necessity_sufficiency": nsj,
                         "curve": {"kept": curve.kept, "faithfulness": curve.faithfulness.tolist(), "level": level},
                         "artifact": str(out)})  # fmt: skip
    print(f"wrote {args.out}/index.html")
    return 0
