"""Training an SAE: Adam, LR warm-up and linear decay, dead-latent tracking, checkpoints that resume exactly.

The loop draws the batch for step t from a deterministic source (see ``sources.py``), takes one
Adam step, re-projects the decoder rows to unit norm, and every ``checkpoint_every`` steps writes
one safetensors file with the weights, Adam's moments, the RNG state and the step. Rerunning the
same call after an interruption continues from the last checkpoint and, on CPU, ends with weights
bitwise equal to an uninterrupted run (tested).

Dead latents: a latent that has not fired for ``dead_tokens`` tokens is dead; TopK/BatchTopK
SAEs give those latents the AuxK loss (Gao et al. 2024) so they learn to explain the error.

**Data parallel.** Inside a process group (``torchrun --nproc-per-node N -m lmscope sae train ...``,
see :mod:`lmscope.experiments.distributed`) the SAE is wrapped in ``DistributedDataParallel``: every
rank draws the same global batch of ``batch_size`` rows for step t and trains on its contiguous
``batch_size / N`` share, DDP averages the gradients, and the firing statistics that decide which
latents are dead are combined over ranks, so every rank takes the same step. The MSE and L1/L0 terms
are means over the batch, so the averaged gradient is the single-process one up to float summation
order. Two terms are computed per rank and therefore differ from a single process: BatchTopK's
batch-wide top-k and AuxK's normalisation by the residual's variance (both over the rank's share).
Rank 0 writes checkpoints; all ranks resume from them. Logged metrics are the global batch's (combined over ranks).

    >>> import torch
    >>> from lmscope.saes import SAEConfig, TrainConfig, train_sae
    >>> from lmscope.saes.sources import TensorSource
    >>> res = train_sae(TensorSource(torch.randn(512, 8)), SAEConfig("topk", 8, 16, k=2),
    ...                 TrainConfig(total_tokens=2048, batch_size=64, progress=False))
    >>> res.steps
    32
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmscope.experiments import Identity, check_resume, distributed, identity
from lmscope.experiments.artifacts import (
    Provenance,
    load_artifact,
    load_optimizer_tensors,
    optimizer_tensors,
    save_artifact,
)
from lmscope.saes.sae import SAE, SAEConfig
from lmscope.saes.sources import ActivationSource


@dataclass
class TrainConfig:
    """Optimisation settings (independent of the SAE's shape)."""

    total_tokens: int
    """Tokens to train on (steps = total_tokens // batch_size); more than the source holds means epochs."""
    batch_size: int = 1024
    """Tokens per step."""
    lr: float = 4e-4
    """Peak Adam learning rate."""
    threshold_lr: float | None = None
    """Peak Adam learning rate of the JumpReLU log-thresholds (None: ``lr``). Adam moves each log-threshold by
    about its learning rate per step whatever the L0 coefficient, so in a short run at ``lr`` the thresholds
    stay near their start and the coefficient cannot set the sparsity; a larger rate lets it."""
    warmup_steps: int = 50
    """Linear LR warm-up from 0."""
    decay_start: float = 0.8
    """Fraction of the run after which the LR decays linearly to 0."""
    sparsity_warmup_steps: int = 0
    """Linear warm-up of the L1/L0 coefficient (standard / jumprelu)."""
    dead_tokens: int = 200_000
    """A latent that has not fired for this many tokens counts as dead (and gets AuxK)."""
    init_tokens: int = 8192
    """Tokens used before step 0 to set the input scale and b_dec (the data mean)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (0: only the final one)."""
    log_every: int = 25
    """Steps between logged metrics."""
    seed: int = 0
    """Seed for the weight initialisation."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.total_tokens < self.batch_size or self.batch_size <= 0:
            raise ValueError(f"total_tokens ({self.total_tokens}) must be >= batch_size ({self.batch_size}) > 0")
        if not 0 <= self.decay_start <= 1:
            raise ValueError(f"decay_start is a fraction of the run, got {self.decay_start}")
        if self.lr <= 0 or (self.threshold_lr is not None and self.threshold_lr <= 0):
            raise ValueError(f"learning rates must be positive, got lr={self.lr}, threshold_lr={self.threshold_lr}")

    @property
    def steps(self) -> int:
        return self.total_tokens // self.batch_size

    def schedule(self, step: int) -> float:
        """Fraction of the peak learning rate at ``step``: warm-up, flat, then linear decay to 0 over the last part."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        start = int(self.decay_start * self.steps)
        decay = 1.0 if step < start else max(0.0, (self.steps - step) / max(1, self.steps - start))
        return warm * decay

    def lr_at(self, step: int) -> float:
        """Learning rate for ``step`` (of every parameter but the JumpReLU thresholds)."""
        return self.lr * self.schedule(step)


@dataclass
class TrainResult:
    """What :func:`train_sae` returns."""

    sae: SAE
    """The trained SAE (eval mode)."""
    steps: int
    """Steps taken in total (including those before a resume)."""
    tokens: int
    """Tokens seen in total."""
    wall_s: float
    """Seconds spent in this call."""
    resumed_from: int
    """Step the call resumed from (0: a fresh run)."""
    log: list[dict[str, float]] = field(default_factory=list)
    """Metrics every ``log_every`` steps: step, lr, mse, fvu, l0, dead_frac, aux."""


def _init_from_data(sae: SAE, source: ActivationSource, cfg: TrainConfig) -> None:
    n = max(1, cfg.init_tokens // cfg.batch_size)
    x = torch.cat([source.batch(i, cfg.batch_size) for i in range(n)]).to(sae.device)
    c = sae.cfg
    if c.normalize_activations == "expected_average_only_in":
        c.scaling_factor = float(math.sqrt(c.d_in) / x.norm(dim=-1).mean())
    with torch.no_grad():
        sae.b_dec.copy_((x * c.scaling_factor).mean(0))


def _checkpoint_path(folder: Path) -> Path:
    return folder / "checkpoint.safetensors"


def training_identity(source: ActivationSource, sae_cfg: SAEConfig, cfg: TrainConfig) -> Identity:
    """What a training checkpoint was computed from: the SAE's settings, the optimisation settings that change
    the weights (not progress or logging), and the batches (the source's fingerprint)."""
    train = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "log_every", "checkpoint_every")}
    return identity({"kind": "sae_training", "sae": sae_cfg.to_dict(), "train": train}, data=source.fingerprint())


def save_checkpoint(folder: Path, sae: SAE, opt: torch.optim.Optimizer, step: int, log: list[dict[str, float]],
                    train_cfg: TrainConfig, work: Identity) -> Path:  # fmt: skip
    """Write weights, optimizer moments, RNG state and step atomically (safetensors + JSON, no pickle)."""
    opt_tensors, groups = optimizer_tensors(opt)
    tensors: dict[str, Tensor] = {**{f"sae.{k}": v for k, v in sae.state_dict().items()}, **opt_tensors}
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": step, "sae_config": sae.cfg.to_dict(), "train_config": asdict(train_cfg),
            "param_groups": groups, "log": log, "identity": work.to_dict()}  # fmt: skip
    return save_artifact(_checkpoint_path(folder), "sae_checkpoint", tensors, meta=meta, provenance=Provenance.of())


def _load_checkpoint(folder: Path, sae: SAE, opt: torch.optim.Optimizer,
                     work: Identity) -> tuple[int, list[dict[str, float]]]:  # fmt: skip
    art = load_artifact(_checkpoint_path(folder), "sae_checkpoint")
    check_resume(art.meta.get("identity"), work, _checkpoint_path(folder))
    saved = SAEConfig(**art.meta["sae_config"])
    sae.cfg.scaling_factor = saved.scaling_factor
    sae.load_state_dict({k[4:]: v for k, v in art.tensors.items() if k.startswith("sae.")})
    load_optimizer_tensors(opt, art.tensors, art.meta["param_groups"])
    torch.set_rng_state(art.tensors["rng.torch"])
    return int(art.meta["step"]), list(art.meta["log"])


def train_sae(
    source: ActivationSource,
    sae_cfg: SAEConfig,
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    stop_after: int | None = None,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train an SAE on ``source``; with ``out_dir``, checkpoint there and resume from it when present.

    Args:
        source: deterministic batch source (TensorSource, ModelSource...).
        sae_cfg: the SAE's shape and rule (``d_in`` must match the source).
        cfg: optimisation settings.
        out_dir: folder for ``checkpoint.safetensors``; rerunning with the same folder resumes.
        stop_after: stop (after checkpointing) once this step is reached, to simulate an interruption.
        device: where to train.
    """
    if sae_cfg.d_in != source.d_in:
        raise ValueError(f"SAE d_in={sae_cfg.d_in} but the source yields width {source.d_in}")
    rank, ranks = distributed.world()
    if cfg.batch_size % ranks:
        raise ValueError(f"batch_size {cfg.batch_size} does not split evenly over {ranks} ranks")
    share = slice(rank * cfg.batch_size // ranks, (rank + 1) * cfg.batch_size // ranks)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    sae = SAE(SAEConfig(**sae_cfg.to_dict()), generator=gen, device=device)
    # the log-thresholds get their own group (and rate); Adam is per parameter, so the split alone changes nothing
    thresholds = [p for p in (sae.log_threshold,) if p.requires_grad]
    weights = [p for p in sae.parameters() if p.requires_grad and p is not sae.log_threshold]
    peak = [cfg.lr, cfg.lr if cfg.threshold_lr is None else cfg.threshold_lr]
    groups = [{"params": ps, "lr": lr} for ps, lr in zip((weights, thresholds), peak, strict=True) if ps]
    opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999))
    folder = Path(out_dir) if out_dir is not None else None
    start, log = 0, list[dict[str, float]]()
    work = training_identity(source, sae_cfg, cfg)
    if folder is not None and _checkpoint_path(folder).exists():
        start, log = _load_checkpoint(folder, sae, opt, work)
    else:
        _init_from_data(sae, source, cfg)
    sparsity_coeffs = (sae.cfg.l1_coeff, sae.cfg.l0_coeff)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = _bar(cfg, start, end) if rank == 0 else None
    sae.train()
    net: Any = sae
    if ranks > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(sae, device_ids=[sae.device.index] if sae.device.type == "cuda" else None,
                                      broadcast_buffers=False)  # fmt: skip
    for step in range(start, end):
        x = source.batch(step, cfg.batch_size)[share].to(device)
        for group, lr in zip(opt.param_groups, peak, strict=False):
            group["lr"] = lr * cfg.schedule(step)
        ramp = min(1.0, (step + 1) / cfg.sparsity_warmup_steps) if cfg.sparsity_warmup_steps else 1.0
        sae.cfg.l1_coeff, sae.cfg.l0_coeff = sparsity_coeffs[0] * ramp, sparsity_coeffs[1] * ramp
        dead = sae.stale_tokens >= cfg.dead_tokens
        out = net(x, dead_mask=dead)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_grad_()
        opt.step()
        sae.normalize_decoder_()
        _after_step(sae, out.latents.detach(), cfg.batch_size)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log.append(_metrics(sae, x, out, step, cfg.lr_at(step), dead))
            if bar is not None:
                bar.set_postfix(fvu=f"{log[-1]['fvu']:.3f}", l0=f"{log[-1]['l0']:.1f}", dead=f"{log[-1]['dead_frac']:.2f}")
        if bar is not None:
            bar.update(1)
        if folder is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            _save_on_main(folder, sae, opt, step + 1, log, cfg, work)
    if bar is not None:
        bar.close()
    sae.cfg.l1_coeff, sae.cfg.l0_coeff = sparsity_coeffs
    if folder is not None and end > start:
        _save_on_main(folder, sae, opt, end, log, cfg, work)
    sae.cfg.extra = {**sae.cfg.extra, "tokens_seen": end * cfg.batch_size, "train_config": json.loads(json.dumps(asdict(cfg)))}
    sae.eval()
    return TrainResult(sae, end, end * cfg.batch_size, time.perf_counter() - t0, start, log)


def _save_on_main(folder: Path, sae: SAE, opt: torch.optim.Optimizer, step: int, log: list[dict[str, float]],
                  train_cfg: TrainConfig, work: Identity) -> None:  # fmt: skip
    """Rank 0 writes the checkpoint; the others wait until it is in place (a single process just writes)."""
    if distributed.is_main():
        save_checkpoint(folder, sae, opt, step, log, train_cfg, work)
    distributed.barrier()


@torch.no_grad()
def _after_step(sae: SAE, z: Tensor, batch: int) -> None:
    fired = distributed.any_((z > 0).reshape(-1, z.shape[-1]).any(0))  # fired anywhere in the global batch
    sae.stale_tokens.add_(batch)
    sae.stale_tokens[fired] = 0
    if sae.cfg.architecture == "batchtopk":
        pos = z[z > 0]
        if pos.numel():
            # Inference threshold: running mean of the smallest kept activation (Bussmann et al.).
            cur = sae.log_threshold.exp()
            new = torch.where(cur > 1e-6, 0.99 * cur + 0.01 * pos.min(), pos.min().expand_as(cur))
            sae.log_threshold.copy_(new.log())


@torch.no_grad()
def _metrics(sae: SAE, x: Tensor, out: Any, step: int, lr: float, dead: Tensor) -> dict[str, float]:
    """Metrics of the step's global batch (under DDP: combined from the ranks' equal shares)."""
    xs = x * sae.cfg.scaling_factor
    mse, l0, aux = out.losses["mse"], (out.latents > 0).sum(-1).float().mean(), out.losses["aux"]
    if distributed.world()[1] == 1:
        var = (xs - xs.mean(0)).pow(2).sum(-1).mean()
    else:  # the global batch's variance from the ranks' averaged first and second moments
        mse, l0, aux, mean, second = distributed.average([mse, l0, aux, xs.mean(0), xs.pow(2).sum(-1).mean()])
        var = second - mean.pow(2).sum()
    return {
        "step": step + 1, "lr": lr, "mse": float(mse), "fvu": float(mse / var), "l0": float(l0),
        "dead_frac": float(dead.float().mean()), "aux": float(aux),
    }  # fmt: skip


def _bar(cfg: TrainConfig, start: int, end: int):
    if not cfg.progress:
        return None
    from lmscope.experiments.progress import bar

    return bar(end, "train SAE", initial=start, unit="step")
