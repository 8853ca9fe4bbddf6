"""``lmscope sparse train|prune|bridge``: weight-sparse GPT-2s, their circuits, and bridges to a dense twin.

    lmscope sparse train --out runs/sparse --steps 1000 --density 0.1      # sparse model + dense twin
    lmscope sparse prune --run runs/sparse --threshold 0.1 --out runs/sparse/prune
    lmscope sparse bridge --run runs/sparse --out runs/sparse/bridge
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sparse", help="weight-sparse transformers: train, prune circuits, bridge to a dense twin")
    s = p.add_subparsers(dest="sparse_command", metavar="STEP", required=True)
    t = s.add_parser("train", help="train a weight-sparse GPT-2 and its dense twin on the quote-closing corpus")
    t.add_argument("--out", required=True, help="run folder: sparse.safetensors, dense.safetensors, result.json, index.html")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--seq-len", type=int, default=48)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--density", type=float, default=0.1, help="target fraction of nonzero weights per matrix")
    t.add_argument("--anneal-frac", type=float, default=0.5, help="fraction of steps over which the density anneals")
    t.add_argument("--act-k-frac", type=float, default=0.25, help="AbsTopK fraction of active channels (1 = off)")
    t.add_argument("--n-layer", type=int, default=2)
    t.add_argument("--d-model", type=int, default=64)
    t.add_argument("--n-head", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-dense", action="store_true", help="skip the dense twin")
    t.set_defaults(func=run_train)
    r = s.add_parser("prune", help="smallest circuit for the quote task in the sparse and the dense model (mean ablation)")
    r.add_argument("--run", required=True, help="folder written by `sparse train`")
    r.add_argument("--threshold", type=float, default=0.1, help="task loss (binary CE, nats) the circuit must stay under")
    r.add_argument("--prompts", type=int, default=128)
    r.add_argument("--steps", type=int, default=600)
    r.add_argument("--penalty", type=float, default=0.3, help="size penalty (higher ranks nodes better here)")
    r.add_argument("--out", default=None, help="default: RUN/prune")
    r.set_defaults(func=run_prune)
    b = s.add_parser("bridge", help="per-layer encoder/decoder bridges between the dense twin and the sparse model")
    b.add_argument("--run", required=True)
    b.add_argument("--steps", type=int, default=200)
    b.add_argument("--kl-coef", type=float, default=1.0)
    b.add_argument("--batch", type=int, default=32, help="training sequences (the same batch every step)")
    b.add_argument("--out", default=None, help="default: RUN/bridge")
    b.set_defaults(func=run_bridge)


def _task_numbers(model, sp, prompts) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    from lmscope.sparse.model import activation_sparsity
    from lmscope.sparse.task import quote_loss, quote_task

    task = quote_task(model, prompts)
    with activation_sparsity(model, sp):
        loss, acc = quote_loss(model(task.batch), task)
    return float(loss), float(acc)


def run_train(args: argparse.Namespace) -> int:
    from lmscope.core.outputs import Report, new_figure
    from lmscope.sparse.model import SparsityConfig, TrainConfig, heldout_loss, new_model, save_model, train
    from lmscope.sparse.task import lm_batches, quote_prompts

    out = Path(args.out)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr, seed=args.seed)
    sparse_sp = SparsityConfig(target_density=args.density, anneal_frac=args.anneal_frac, act_k_frac=args.act_k_frac)
    runs = [("sparse", sparse_sp)] + ([] if args.no_dense else [("dense", SparsityConfig.dense())])
    test_ids = lm_batches(1, 64, args.seq_len, seed=10_000 + args.seed)[0]
    prompts = quote_prompts(256, seed=1)
    rows, result, curves = [], {"config": vars(cfg), "models": {}}, {}
    for name, sp in runs:
        model = new_model(n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head, seed=args.seed)
        t0 = time.time()
        tr = train(model, sp, cfg, log=lambda m, name=name: print(f"[{name}] {m}", flush=True))
        loss, acc = _task_numbers(model, sp, prompts)
        numbers = {"weight_density": tr.density, "train_loss_last100": sum(tr.losses[-100:]) / len(tr.losses[-100:]),
                   "heldout_lm_loss": heldout_loss(model, sp, test_ids), "task_bce": loss, "task_acc": acc,
                   "seconds": time.time() - t0, "sparsity": vars(sp)}  # fmt: skip
        result["models"][name] = numbers
        rows.append([name, tr.density, numbers["heldout_lm_loss"], loss, acc, numbers["seconds"]])
        curves[name] = tr
        save_model(out / f"{name}.safetensors", model, sp, train=vars(cfg), task_bce=loss, task_acc=acc)
        print(f"[{name}] density {tr.density:.4f} held-out loss {numbers['heldout_lm_loss']:.3f} task acc {acc:.3f}")
    report = Report("Weight-sparse GPT-2 vs dense twin")
    report.table("Models", ["model", "weight density", "held-out LM loss", "quote task BCE", "quote task acc", "seconds"], rows)
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(10, 3.5))
    for name, tr in curves.items():
        ax1.plot(tr.losses, label=name, lw=0.8)
        ax2.plot(tr.densities, label=name)
    ax1.set(xlabel="step", ylabel="train loss", yscale="log")
    ax2.set(xlabel="step", ylabel="scheduled density")
    ax1.legend()
    report.figure("training", fig, "Training loss and annealed weight density")
    report.text("Notes", "Density counts the block weight matrices (embeddings, biases, norms stay dense). "
                "Task: close a string with the right quote; BCE and accuracy compare only ' and \".")  # fmt: skip
    report.write(out, result)
    print(f"wrote {out}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from lmscope.core.outputs import Report, new_figure
    from lmscope.sparse.model import activation_sparsity, load_model
    from lmscope.sparse.prune import PruneConfig, prune_model
    from lmscope.sparse.task import quote_loss, quote_prompts, quote_task

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "prune"
    cfg = PruneConfig(steps=args.steps, penalty=args.penalty)
    prompts = quote_prompts(args.prompts, seed=2)
    result, rows = {"threshold": args.threshold, "prompts": args.prompts, "models": {}}, []
    for name in ("sparse", "dense"):
        path = run / f"{name}.safetensors"
        if not path.is_file():
            continue
        model, sp, _ = load_model(path)
        task = quote_task(model, prompts)
        t0 = time.time()
        try:
            with activation_sparsity(model, sp):
                res = prune_model(model, task.batch, partial(quote_loss, task=task), args.threshold, cfg)
        except ValueError as exc:
            print(f"[{name}] {exc}")
            result["models"][name] = {"error": str(exc)}
            continue
        numbers = {k: v for k, v in vars(res).items() if k != "keep"} | {"seconds": time.time() - t0}
        result["models"][name] = numbers
        rows.append([name, res.circuit_nodes, res.n_nodes, res.circuit_weights, res.total_weights, res.loss_full,
                     res.loss_sufficient, res.acc_sufficient, res.loss_necessary, res.acc_necessary,
                     res.loss_all_ablated])  # fmt: skip
        print(f"[{name}] circuit {res.circuit_nodes}/{res.n_nodes} nodes, {res.circuit_weights}/{res.total_weights} weights; "
              f"sufficient acc {res.acc_sufficient:.3f}, necessary (circuit ablated) acc {res.acc_necessary:.3f}")
    if not rows:
        raise FileNotFoundError(f"no prunable model in {run} (expected sparse.safetensors / dense.safetensors)")
    report = Report(f"Quote-task circuits at task loss <= {args.threshold}")
    report.table("Circuits", ["model", "circuit nodes", "all nodes", "circuit weights", "all weights", "loss full",
                              "loss circuit only", "acc circuit only", "loss circuit ablated", "acc circuit ablated",
                              "loss all ablated"], rows)  # fmt: skip
    fig, ax = new_figure(figsize=(5, 3))
    ax.bar([r[0] for r in rows], [r[1] for r in rows])
    ax.set(ylabel="circuit nodes", title="Circuit size at equal task loss")
    report.figure("circuit_size", fig, "Nodes kept (MLP neurons + attention value channels)")
    report.text("Method", "Node masks learned with a sigmoid relaxation and a size penalty; the circuit is the smallest "
                "top-n by score whose hard mask keeps the binary quote loss under the threshold; everything removed "
                "is mean-ablated over the task prompts.")  # fmt: skip
    report.write(out, result)
    print(f"wrote {out}")
    return 0


def run_bridge(args: argparse.Namespace) -> int:
    from lmscope.core.outputs import Report, new_figure
    from lmscope.sparse.bridge import BridgeConfig, save_bridges, train_bridges
    from lmscope.sparse.model import load_model
    from lmscope.sparse.task import lm_batches

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "bridge"
    dense, dense_sp, _ = load_model(run / "dense.safetensors")
    sparse, sparse_sp, meta = load_model(run / "sparse.safetensors")
    seq_len = int(meta.get("train", {}).get("seq_len", 48))
    train_ids = lm_batches(1, args.batch, seq_len, seed=20_000)[0]
    test_ids = lm_batches(1, 64, seq_len, seed=30_000)[0]
    cfg = BridgeConfig(k_frac=sparse_sp.act_k_frac, steps=args.steps, kl_coef=args.kl_coef)
    bridges, results = train_bridges(dense, dense_sp, sparse, sparse_sp, train_ids, test_ids, cfg)
    save_bridges(out / "bridges.safetensors", bridges, cfg)
    rows = [[r.layer, r.fvu_dense_to_sparse, r.fvu_sparse_to_dense, r.kl_into_sparse, r.kl_mean_ablate_sparse,
             r.kl_into_dense, r.kl_mean_ablate_dense] for r in results]  # fmt: skip
    for r in rows:
        print("layer {} FVU d->s {:.3f} s->d {:.3f} | KL into sparse {:.4f} (mean-abl {:.3f}) into dense {:.4f} (mean-abl {:.3f})"
              .format(*r))  # fmt: skip
    report = Report("Bridges between the dense twin and the sparse model")
    report.table("Per layer (held-out tokens)", ["layer", "FVU dense->sparse", "FVU sparse->dense", "KL spliced into sparse",
                 "KL mean-ablate sparse", "KL spliced into dense", "KL mean-ablate dense"], rows)  # fmt: skip
    fig, ax = new_figure(figsize=(5, 3))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label="dense->sparse")
    ax.plot([r[0] for r in rows], [r[2] for r in rows], "s-", label="sparse->dense")
    ax.set(xlabel="layer", ylabel="FVU")
    ax.legend()
    report.figure("bridge_fvu", fig, "Reconstruction FVU per layer")
    report.write(out, {"config": vars(cfg), "layers": [vars(r) for r in results]})
    print(f"wrote {out}")
    return 0
