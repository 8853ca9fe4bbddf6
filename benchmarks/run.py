"""lmscope's overhead against raw Hugging Face, nnsight and TransformerLens, on the bundled model.

    .venv/bin/python benchmarks/run.py                 # full run (about 5 minutes on 2 free cores)
    .venv/bin/python benchmarks/run.py --quick         # fewer repetitions
    .venv/bin/python benchmarks/run.py --threads 1 --json outputs/bench.json

Three workloads, each timed with interleaved repetitions (see ``timing.py``), medians reported as
ratios to raw HF:

(a) capture every layer's resid_post on 8 x 128 tokens vs a raw HF forward   (target <= 1.03x)
(b) capture up to layer 6 with ``stop_early=True`` vs a full HF forward       (target <= 0.3x)
(c) greedy generation of 32 tokens with a steering edit at resid_post 10 on
    generated positions vs plain HF ``generate``                              (target <= 1.03x)

and (d) the same work done with nnsight (and TransformerLens's TransformerBridge when installed).
The forward's arithmetic rate is printed beside a measured float32 GEMM rate on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from timing import Timings, interleaved  # noqa: E402

import lmscope as ls  # noqa: E402
from lmscope.data.corpus import token_chunks  # noqa: E402

TARGETS = {"a": 1.03, "b": 0.30, "c": 1.03}


def forward_flops(model: ls.Model, batch: int, seq: int) -> float:
    """Matmul flops of one forward: 2 * (Linear weights) per token, plus causal attention scores and mixing."""
    linear = sum(m.in_features * m.out_features for m in model.hf.modules() if isinstance(m, torch.nn.Linear))
    s = model.shape
    attn = 2 * 2 * s.n_layers * s.n_heads * s.d_head * (seq + 1) / 2  # QK^T and AV, average causal context
    return batch * seq * (2 * linear + attn)


def gemm_gflops(m: int, k: int, n: int, reps: int) -> float:
    """Best-of-reps float32 GEMM rate for an (m, k) @ (k, n) product."""
    import time

    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions per benchmark")
    p.add_argument("--quick", action="store_true", help="3 repetitions, no TransformerLens")
    p.add_argument("--no-peers", action="store_true", help="skip nnsight and TransformerLens")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--only", choices=("single", "multi"), default=None, help="only the single-pass or the multi-pass part")
    p.add_argument("--parts", nargs="+", default=None,
                   choices=("cli", "patching", "attribution", "lre", "evaluations", "sae"), help="multi-pass parts to run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else args.reps
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model = ls.load()
    report: dict[str, Any] = {}
    if args.only != "multi":
        report = single_pass(model, args, reps)
    if args.only != "single":
        report["multipass"] = multi_pass(model, args, reps)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({k: v for k, v in report.items() if k != "text"}, indent=2))
    return 0


def multi_pass(model: ls.Model, args: argparse.Namespace, reps: int) -> list[dict[str, Any]]:
    """The multi-pass workloads (``multipass.py``), each against its own baseline; prints their table."""
    import multipass as mp

    heavy = 1 if args.quick else max(1, reps // 3)  # the patching sweeps take minutes per repetition
    parts = {
        "cli": lambda: mp.cli_startup(reps),
        "patching": lambda: mp.patching(model, heavy, n=4, with_nnsight=not args.no_peers),
        "attribution": lambda: mp.attribution(model, reps, n=4),
        "lre": lambda: mp.lre(model, heavy),
        "evaluations": lambda: mp.evaluations(model, heavy, windows=8 if args.quick else 16),
        "sae": lambda: mp.sae_training(model, heavy, tokens=8192 if args.quick else 32768, d_sae=4608, k=32),
    }
    rows: list[dict[str, Any]] = []
    print(f"{'benchmark':24s} {'variant':44s} {'median s':>9s} {'ratio':>8s} {'peak MB':>8s}  vs / note", flush=True)
    for name, part in parts.items():
        if args.parts and name not in args.parts:
            continue
        new = part()
        for r in new:  # printed as each part finishes: a late failure loses nothing already measured
            ratio = "" if r["ratio"] is None else f"{r['ratio']:7.3f}x"
            value = f"{r['median_s']:9.3f}" if r["vs"] != "speed-up" else f"{r['median_s']:8.2f}x"
            peak = "" if r.get("peak_mb") is None else f"{r['peak_mb']:8.0f}"
            print(f"{r['benchmark'][:24]:24s} {r['variant'][:44]:44s} {value:>9s} {ratio:>8s} {peak:>8s}  {r['vs']} "
                  f"{r['note']}".rstrip(), flush=True)  # fmt: skip
        rows += new
    print(f"multi-pass work — threads={args.threads}; load avg {os.getloadavg()[0]:.1f}", flush=True)
    return rows


def single_pass(model: ls.Model, args: argparse.Namespace, reps: int) -> dict[str, Any]:
    n_layers = model.shape.n_layers
    ids = torch.stack(list(token_chunks(model.tokenizer, 128, 8)))  # (8, 128) real text
    hf_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    all_sites = [ls.Site("resid_post", layer) for layer in range(n_layers)]
    early_sites = [ls.Site("resid_post", layer) for layer in range(7)]
    notes: list[str] = []

    def raw_forward() -> object:
        with torch.no_grad():
            return model.hf(**hf_inputs, use_cache=False).logits

    def ls_capture_all() -> object:
        with ls.capture(model, all_sites) as acts:
            model(ids)
        return acts

    def ls_capture_stop() -> object:
        with ls.capture(model, early_sites, stop_early=True) as acts:
            model(ids)
        return acts

    lm, why = (None, "--no-peers") if args.no_peers else peers.nnsight_model(model)
    if why:
        notes.append(f"nnsight skipped: {why}")
    bridge, why_tl = (None, "--quick/--no-peers") if (args.quick or args.no_peers) else peers.transformer_lens_bridge(ls.load)
    if why_tl:
        notes.append(f"TransformerLens skipped: {why_tl}")

    # parity checks first: every variant must compute the same thing, or its time means nothing
    with ls.capture(model, all_sites) as acts:
        model(ids)
    if lm is not None:
        outs = peers.nnsight_capture_all(lm, ids, n_layers)()
        assert torch.equal(_t(outs[-1]), acts[all_sites[-1]]), "nnsight resid_post differs from lmscope"

    fwd: dict[str, Any] = {"HF forward": raw_forward, "lmscope capture 30": ls_capture_all, "lmscope stop@6": ls_capture_stop}
    if lm is not None:
        fwd["nnsight capture 30"] = peers.nnsight_capture_all(lm, ids, n_layers)
        fwd["nnsight stop@6"] = peers.nnsight_capture_stop(lm, ids, 6)
    if bridge is not None:
        fwd["TL capture 30"] = peers.tl_capture(bridge, ids)
        fwd["TL stop@6"] = peers.tl_capture(bridge, ids, stop_at_layer=7)
    t_fwd = interleaved("forward 8x128", fwd, reps)

    # (c) steering during generation
    prompt = "Write a long, detailed story about a dragon who learns to paint."
    batch = model.tokenize([prompt], chat=True)
    gen = torch.Generator().manual_seed(0)
    vector = torch.randn(model.shape.d_model, generator=gen)
    # as large as a typical residual at layer 10, so that steering visibly changes the tokens
    vector = vector / vector.norm() * float(acts[ls.Site("resid_post", 10)].norm(dim=-1).median())
    site10 = ls.Site("resid_post", 10)
    new = 32
    pad = model.tokenizer.pad_token_id

    def raw_generate() -> torch.Tensor:
        with torch.no_grad():
            out = model.hf.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=new,
                                    do_sample=False, pad_token_id=pad, temperature=None, top_p=None, top_k=None)  # fmt: skip
        return out[:, batch.shape[1] :]

    def ls_steer_generate() -> torch.Tensor:
        with ls.intervene(model, {site10: ls.edits.add(vector, positions="generated")}):
            return model.generate_tokens(batch, max_new_tokens=new)

    gens: dict[str, Any] = {"HF generate": raw_generate, "lmscope steer+generate": ls_steer_generate}
    steered, plain = ls_steer_generate(), raw_generate()
    counts = {"HF generate": plain.shape[1], "lmscope steer+generate": steered.shape[1]}
    if torch.equal(steered, plain):
        notes.append("the steering vector did not change the greedy tokens")
    if lm is not None:
        gens["nnsight steer+generate"] = peers.nnsight_steer_generate(lm, batch, 10, vector, new, pad)
        nn_ids = gens["nnsight steer+generate"]()
        nn_new = _t(nn_ids)[:, batch.shape[1] :]
        counts["nnsight steer+generate"] = nn_new.shape[1]
        if not torch.equal(nn_new, steered):
            notes.append("nnsight steered tokens differ from lmscope's (check the edit positions)")
    if bridge is not None:
        gens["TL steer+gen (no cache)"] = peers.tl_steer_generate(bridge, batch, 10, vector, new, use_cache=False)
        tl_new = _t(gens["TL steer+gen (no cache)"]())[:, batch.shape[1] :]
        counts["TL steer+gen (no cache)"] = tl_new.shape[1]
        notes.append("TransformerLens generates without its KV cache: TransformerBridge 3.9's cached generate repeats one "
                     "token on this model even without hooks, so its timing is for more work than the others")  # fmt: skip
        if not torch.equal(tl_new, steered[:, : tl_new.shape[1]]):
            notes.append("TransformerLens steered tokens differ from lmscope's")
    t_gen = interleaved("generate 32", gens, reps)

    flops = forward_flops(model, *ids.shape)
    gemm = {"model-shaped (1024x576 @ 576x1536)": gemm_gflops(1024, 576, 1536, 10),
            "square 2048": gemm_gflops(2048, 2048, 2048, 3)}  # fmt: skip
    report = _report(t_fwd, t_gen, flops, gemm, counts, notes, args, reps)
    print(report["text"])
    return report


def _t(x: Any) -> torch.Tensor:
    """nnsight may hand back a saved proxy or a tuple; get the tensor."""
    x = getattr(x, "value", x)
    return x[0] if isinstance(x, tuple) else x


def _report(t_fwd: Timings, t_gen: Timings, flops: float, gemm: dict[str, float], counts: dict[str, int],
            notes: list[str], args: argparse.Namespace, reps: int) -> dict[str, Any]:  # fmt: skip
    base_f, base_g = t_fwd.median("HF forward"), t_gen.median("HF generate")
    rows = []
    for t, base, basename in ((t_fwd, base_f, "HF forward"), (t_gen, base_g, "HF generate")):
        for v in t.samples:
            target = None
            if v == "lmscope capture 30":
                target = TARGETS["a"]
            elif v == "lmscope stop@6":
                target = TARGETS["b"]
            elif v == "lmscope steer+generate":
                target = TARGETS["c"]
            ratio = t.median(v) / base
            rows.append({"benchmark": t.name, "variant": v, "median_s": t.median(v), "iqr_over_median": t.spread(v),
                         "ratio": ratio, "vs": basename, "target": target,
                         "ok": None if target is None else ratio <= target})  # fmt: skip
    lines = [
        f"lmscope benchmarks — {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads={args.threads}, reps={reps} (interleaved, medians); load avg {os.getloadavg()[0]:.1f}",
        "",
        f"{'benchmark':15s} {'variant':26s} {'median s':>9s} {'IQR/med':>8s} {'ratio':>7s}  {'target':>7s}",
    ]
    for r in rows:
        target = "" if r["target"] is None else f"<={r['target']:.2f} {'ok' if r['ok'] else 'MISS'}"
        lines.append(f"{r['benchmark']:15s} {r['variant']:26s} {r['median_s']:9.3f} {r['iqr_over_median']:8.2f} "
                     f"{r['ratio']:6.3f}x  {target}")  # fmt: skip
    lines += ["", f"new tokens generated: {counts}",
              f"forward 8x128: {flops / 1e9:.0f} GFLOP -> {flops / base_f / 1e9:.1f} GFLOP/s (HF forward median)"]  # fmt: skip
    lines += [f"float32 GEMM {k}: {v:.1f} GFLOP/s" for k, v in gemm.items()]
    lines += [f"note: {n}" for n in notes]
    return {"rows": rows, "gflop_forward": flops / 1e9, "gflops_forward": flops / base_f / 1e9, "gemm_gflops": gemm,
            "new_tokens": counts, "notes": notes, "threads": args.threads, "reps": reps,
            "samples": {**t_fwd.samples, **t_gen.samples}, "text": "\n".join(lines)}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
