"""The weight-sparse family's experiments: train a sparse GPT-2 and its dense twin, prune circuits, bridge the two."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lmscope.experiments import Context, Experiment, Result, new_figure, param


def _task_numbers(model: Any, sp: Any, prompts: Any) -> tuple[float, float]:
    from lmscope.sparse.model import activation_sparsity
    from lmscope.sparse.task import quote_loss, quote_task

    task = quote_task(model, prompts)
    with activation_sparsity(model, sp):
        loss, acc = quote_loss(model(task.batch), task)
    return float(loss), float(acc)


def _run_folder(run: str, *names: str) -> Path:
    folder = Path(run)
    if not any((folder / f"{n}.safetensors").is_file() for n in names):
        raise FileNotFoundError(f"--run {run} holds none of {[f'{n}.safetensors' for n in names]}: run `sparse train` first")
    return folder


@dataclass(frozen=True)
class SparseTrain(Experiment):
    """Train a weight-sparse GPT-2 (Gao et al. 2025) and its dense twin on the quote-closing corpus."""

    command = "sparse train"
    about = "train a weight-sparse GPT-2 and its dense twin on the quote-closing corpus"
    uses_model = False
    steps: int = param(1000, "optimizer steps")
    batch: int = param(32, "sequences per step")
    seq_len: int = param(48, "tokens per sequence")
    lr: float = param(3e-3, "AdamW learning rate")
    density: float = param(0.1, "target fraction of nonzero weights per matrix")
    anneal_frac: float = param(0.5, "fraction of steps over which the density anneals")
    act_k_frac: float = param(0.25, "AbsTopK fraction of active channels (1 = off)")
    n_layer: int = param(2, "layers")
    d_model: int = param(64, "width")
    n_head: int = param(4, "heads")
    seed: int = param(0, "initialisation and data seed")
    dense: bool = param(True, "also train the dense twin")

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.sparse.model import SparsityConfig, TrainConfig, heldout_loss, new_model, save_model, train
        from lmscope.sparse.task import lm_batches, quote_prompts

        out = ctx.folder()
        cfg = TrainConfig(steps=self.steps, batch=self.batch, seq_len=self.seq_len, lr=self.lr, seed=self.seed)
        sparse_sp = SparsityConfig(target_density=self.density, anneal_frac=self.anneal_frac, act_k_frac=self.act_k_frac)
        runs = [("sparse", sparse_sp)] + ([("dense", SparsityConfig.dense())] if self.dense else [])
        test_ids = lm_batches(1, 64, self.seq_len, seed=10_000 + self.seed)[0]
        prompts = quote_prompts(256, seed=1)
        rows, data, curves = [], {"train": vars(cfg), "models": {}}, {}
        page = Result("Weight-sparse GPT-2 vs dense twin")
        for name, sp in runs:
            net = new_model(n_layer=self.n_layer, d_model=self.d_model, n_head=self.n_head, seed=self.seed)
            t0 = time.time()
            tr = train(net, sp, cfg, log=None if ctx.quiet else ctx.callback(name))
            loss, acc = _task_numbers(net, sp, prompts)
            numbers = {"weight_density": tr.density, "train_loss_last100": sum(tr.losses[-100:]) / len(tr.losses[-100:]),
                       "heldout_lm_loss": heldout_loss(net, sp, test_ids), "task_bce": loss, "task_acc": acc,
                       "seconds": time.time() - t0, "sparsity": vars(sp)}  # fmt: skip
            data["models"][name] = numbers
            page.summary |= {f"{name}_density": tr.density, f"{name}_heldout_loss": numbers["heldout_lm_loss"],
                             f"{name}_task_acc": acc}  # fmt: skip
            rows.append([name, tr.density, numbers["heldout_lm_loss"], loss, acc, numbers["seconds"]])
            curves[name] = tr
            save_model(out / f"{name}.safetensors", net, sp, train=vars(cfg), task_bce=loss, task_acc=acc)
            page.artifacts[name] = f"{name}.safetensors"
            page.say(f"[{name}] density {tr.density:.4f} held-out loss {numbers['heldout_lm_loss']:.3f} task acc {acc:.3f}")
        page.table("Models", ["model", "weight density", "held-out LM loss", "quote task BCE", "quote task acc", "seconds"], rows)
        fig, (ax1, ax2) = new_figure(1, 2, figsize=(10, 3.5))
        for name, tr in curves.items():
            ax1.plot(tr.losses, label=name, lw=0.8)
            ax2.plot(tr.densities, label=name)
        ax1.set(xlabel="step", ylabel="train loss", yscale="log")
        ax2.set(xlabel="step", ylabel="scheduled density")
        ax1.legend()
        page.figure("training", fig, "Training loss and annealed weight density")
        page.text("Notes", "Density counts the block weight matrices (embeddings, biases, norms stay dense). "
                  "Task: close a string with the right quote; BCE and accuracy compare only ' and \".")  # fmt: skip
        page.data = data
        return page


@dataclass(frozen=True)
class SparsePrune(Experiment):
    """The smallest circuit for the quote task in the sparse and the dense model (mean ablation)."""

    command = "sparse prune"
    about = "smallest circuit for the quote task in the sparse and the dense model"
    uses_model = False
    run_dir: str = param("", "folder written by `sparse train`", required=True, metavar="RUN")
    threshold: float = param(0.1, "task loss (binary CE, nats) the circuit must stay under")
    n_prompts: int = param(128, "task prompts")
    steps: int = param(600, "mask optimisation steps")
    penalty: float = param(0.3, "size penalty")

    def check(self) -> None:
        _run_folder(self.run_dir, "sparse", "dense")

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.sparse.model import activation_sparsity, load_model
        from lmscope.sparse.prune import PruneConfig, prune_model
        from lmscope.sparse.task import quote_loss, quote_prompts, quote_task

        run = _run_folder(self.run_dir, "sparse", "dense")
        cfg = PruneConfig(steps=self.steps, penalty=self.penalty)
        prompts = quote_prompts(self.n_prompts, seed=2)
        data: dict[str, Any] = {"models": {}}
        rows = []
        page = Result(f"Quote-task circuits at task loss <= {self.threshold}")
        for name in ("sparse", "dense"):
            path = run / f"{name}.safetensors"
            if not path.is_file():
                continue
            net, sp, _ = load_model(path)
            task = quote_task(net, prompts)
            t0 = time.time()
            try:
                with activation_sparsity(net, sp):
                    res = prune_model(net, task.batch, partial(quote_loss, task=task), self.threshold, cfg)
            except ValueError as exc:  # no circuit reaches the threshold: recorded with its reason
                page.say(f"[{name}] {exc}")
                data["models"][name] = {"error": str(exc)}
                continue
            data["models"][name] = {k: v for k, v in vars(res).items() if k != "keep"} | {"seconds": time.time() - t0}
            page.summary |= {f"{name}_circuit_nodes": res.circuit_nodes, f"{name}_nodes": res.n_nodes,
                             f"{name}_acc_sufficient": res.acc_sufficient,
                             f"{name}_acc_necessary": res.acc_necessary}  # fmt: skip
            rows.append([name, res.circuit_nodes, res.n_nodes, res.circuit_weights, res.total_weights, res.loss_full,
                         res.loss_sufficient, res.acc_sufficient, res.loss_necessary, res.acc_necessary,
                         res.loss_all_ablated])  # fmt: skip
            page.say(f"[{name}] circuit {res.circuit_nodes}/{res.n_nodes} nodes, {res.circuit_weights}/{res.total_weights} "
                     f"weights; sufficient acc {res.acc_sufficient:.3f}, necessary (circuit ablated) acc {res.acc_necessary:.3f}")
        page.table("Circuits", ["model", "circuit nodes", "all nodes", "circuit weights", "all weights", "loss full",
                                "loss circuit only", "acc circuit only", "loss circuit ablated", "acc circuit ablated",
                                "loss all ablated"], rows)  # fmt: skip
        if rows:
            fig, ax = new_figure(figsize=(5, 3))
            ax.bar([r[0] for r in rows], [r[1] for r in rows])
            ax.set(ylabel="circuit nodes", title="Circuit size at equal task loss")
            page.figure("circuit_size", fig, "Nodes kept (MLP neurons + attention value channels)")
        page.text("Method", "Node masks learned with a sigmoid relaxation and a size penalty; the circuit is the smallest "
                  "top-n by score whose hard mask keeps the binary quote loss under the threshold; everything removed "
                  "is mean-ablated over the task prompts.")  # fmt: skip
        page.data = data
        return page


@dataclass(frozen=True)
class SparseBridge(Experiment):
    """Per-layer encoder/decoder bridges between the dense twin and the sparse model."""

    command = "sparse bridge"
    about = "per-layer bridges between the dense twin and the sparse model"
    uses_model = False
    run_dir: str = param("", "folder written by `sparse train` (needs both models)", required=True, metavar="RUN")
    steps: int = param(200, "bridge training steps")
    kl_coef: float = param(1.0, "weight of the KL term")
    batch: int = param(32, "training sequences (the same batch every step)")

    def check(self) -> None:
        folder = _run_folder(self.run_dir, "sparse")
        if not (folder / "dense.safetensors").is_file():
            raise FileNotFoundError(f"--run {self.run_dir} has no dense.safetensors: train with the dense twin")

    def run(self, model: Any, ctx: Context) -> Result:
        from lmscope.sparse.bridge import BridgeConfig, save_bridges, train_bridges
        from lmscope.sparse.model import load_model
        from lmscope.sparse.task import lm_batches

        run = Path(self.run_dir)
        dense, dense_sp, _ = load_model(run / "dense.safetensors")
        sparse, sparse_sp, meta = load_model(run / "sparse.safetensors")
        seq_len = int(meta.get("train", {}).get("seq_len", 48))
        train_ids = lm_batches(1, self.batch, seq_len, seed=20_000)[0]
        test_ids = lm_batches(1, 64, seq_len, seed=30_000)[0]
        cfg = BridgeConfig(k_frac=sparse_sp.act_k_frac, steps=self.steps, kl_coef=self.kl_coef)
        bridges, results = train_bridges(dense, dense_sp, sparse, sparse_sp, train_ids, test_ids, cfg)
        save_bridges(ctx.folder() / "bridges.safetensors", bridges, cfg)
        rows = [[r.layer, r.fvu_dense_to_sparse, r.fvu_sparse_to_dense, r.kl_into_sparse, r.kl_mean_ablate_sparse,
                 r.kl_into_dense, r.kl_mean_ablate_dense] for r in results]  # fmt: skip
        page = Result("Bridges between the dense twin and the sparse model")
        page.artifacts["bridges"] = "bridges.safetensors"
        for r in rows:
            page.say("layer {} FVU d->s {:.3f} s->d {:.3f} | KL into sparse {:.4f} (mean-abl {:.3f}) into dense {:.4f} "
                     "(mean-abl {:.3f})".format(*r))  # fmt: skip
        page.summary = {"max_fvu_dense_to_sparse": max(r[1] for r in rows), "max_kl_into_sparse": max(r[3] for r in rows)}
        page.table("Per layer (held-out tokens)", ["layer", "FVU dense->sparse", "FVU sparse->dense", "KL spliced into sparse",
                   "KL mean-ablate sparse", "KL spliced into dense", "KL mean-ablate dense"], rows)  # fmt: skip
        fig, ax = new_figure(figsize=(5, 3))
        ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label="dense->sparse")
        ax.plot([r[0] for r in rows], [r[2] for r in rows], "s-", label="sparse->dense")
        ax.set(xlabel="layer", ylabel="FVU")
        ax.legend()
        page.figure("bridge_fvu", fig, "Reconstruction FVU per layer")
        page.data = {"config": vars(cfg), "layers": [vars(r) for r in results]}
        return page
