"""Sparse autoencoders: four activation rules, one module shape, the rule stored with the weights.

A sparse autoencoder (SAE) rewrites an activation x (d_in) as a sparse, non-negative code
z (d_sae, mostly zeros) times a dictionary of directions, the decoder rows::

    pre = (x * s - b_dec) @ W_enc + b_enc        # s: input scaling recorded in the config
    z   = rule(pre)                              # the activation rule below
    x'  = (z @ W_dec + b_dec) / s

The rows of ``W_dec`` are the "features" (Bricken et al. 2023, *Towards Monosemanticity*;
Templeton et al. 2024, *Scaling Monosemanticity*, the 34M-feature SAE with the Golden Gate
feature). Rules:

- ``standard`` (ReLU + L1): z = relu(pre); loss = MSE + l1_coeff * sum_i z_i ||W_dec_i||.
- ``topk``: keep the k largest pre-activations per token (Gao et al. 2024); no sparsity penalty,
  an auxiliary loss (AuxK) lets dead latents learn to explain the residual error.
- ``batchtopk``: keep the k * batch largest over the whole batch (Bussmann et al. 2024); at
  inference a threshold (running mean of the smallest kept activation) replaces the batch rule.
- ``jumprelu``: z = pre * [pre > theta] with a learned per-latent threshold, trained through a
  straight-through estimator with a rectangle kernel of width ``bandwidth`` and an L0 penalty
  (Rajamanoharan et al. 2024, Gemma Scope).

The decoder rows are kept at unit norm (projected after each optimizer step), so latent values
are comparable across latents. Assumptions: activations of one site; tokens independent.

    >>> import torch
    >>> from lmscope.saes import SAE, SAEConfig
    >>> sae = SAE(SAEConfig(architecture="topk", d_in=8, d_sae=32, k=4))
    >>> out = sae(torch.randn(5, 8))
    >>> int((out.latents > 0).sum(-1).max()) <= 4
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

ARCHITECTURES: tuple[str, ...] = ("standard", "topk", "batchtopk", "jumprelu")
"""The activation rules lmscope implements (SAELens names)."""
NORMALIZATIONS: tuple[str, ...] = ("none", "expected_average_only_in")


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE; saved next to its weights."""

    architecture: str
    """Activation rule: one of ``ARCHITECTURES``. Never defaulted: a file without it is refused."""
    d_in: int
    """Width of the activation it reads (d_model for residual sites)."""
    d_sae: int
    """Number of latents (dictionary size)."""
    k: int | None = None
    """Active latents per token for ``topk``/``batchtopk`` (average, for ``batchtopk``)."""
    l1_coeff: float = 5.0
    """L1 weight for ``standard``."""
    l0_coeff: float = 1e-3
    """L0 weight for ``jumprelu``."""
    bandwidth: float = 0.05
    """Width of the rectangle kernel in the JumpReLU straight-through estimator."""
    initial_threshold: float = 0.05
    """Starting threshold for ``jumprelu``."""
    aux_k: int | None = None
    """Latents the AuxK loss may use (default d_in // 2); ``topk``/``batchtopk`` only."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss."""
    normalize_activations: str = "none"
    """``none`` or ``expected_average_only_in``: scale inputs so E||x s||^2 = d_in (s in ``scaling_factor``)."""
    scaling_factor: float = 1.0
    """The input scale s (set from data before training when normalising)."""
    hook_name: str = ""
    """TransformerLens-style site name, e.g. ``blocks.12.hook_resid_post``."""
    model_name: str = ""
    """Id of the model the SAE was trained on."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (dataset hash, tokens seen...)."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.architecture!r}; supported: {list(ARCHITECTURES)}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.architecture in ("topk", "batchtopk"):
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise ValueError(f"{self.architecture} needs 0 < k <= d_sae ({self.d_sae}), got k={self.k}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations must be one of {NORMALIZATIONS}, got {self.normalize_activations!r}")
        if self.bandwidth <= 0 or self.scaling_factor <= 0:
            raise ValueError("bandwidth and scaling_factor must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SAEOutput(NamedTuple):
    """What :meth:`SAE.forward` returns."""

    reconstruction: Tensor
    """(..., d_in) x' in the input's own scale."""
    latents: Tensor
    """(..., d_sae) the sparse code z."""
    loss: Tensor
    """Scalar training loss (mse + sparsity + aux)."""
    losses: dict[str, Tensor]
    """Parts of the loss: ``mse`` (per-token squared error summed over d_in, in the normalised scale),
    ``sparsity`` (L1 or L0 term), ``aux`` (AuxK), all scalars."""


def _rect(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z = x * [x > theta]; d/dtheta through a rectangle kernel of width eps (Gemma Scope eq. 11)."""

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return x * (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, theta = ctx.saved_tensors
        eps = ctx.eps
        gx = (x > theta).to(x.dtype) * g
        gtheta = -(theta / eps) * _rect((x - theta) / eps) * g
        return gx, gtheta.reshape(-1, theta.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """H(x - theta) with the straight-through gradient -1/eps K((x - theta)/eps) for theta."""

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, theta = ctx.saved_tensors
        eps = ctx.eps
        gtheta = -(1.0 / eps) * _rect((x - theta) / eps) * g
        return torch.zeros_like(x), gtheta.reshape(-1, theta.shape[-1]).sum(0), None


def topk_codes(pre: Tensor, k: int) -> Tensor:
    """relu of the k largest entries of each row of ``pre``, zeros elsewhere (differentiable)."""
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


def _gather_decode(vals: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
    """sum_j vals[..., j] * W_dec[idx[..., j]]: a sparse code's decoding without its zeros (differentiable)."""
    k = idx.shape[-1]
    flat = torch.nn.functional.embedding_bag(idx.reshape(-1, k), W_dec, per_sample_weights=vals.reshape(-1, k), mode="sum")
    return flat.reshape(*idx.shape[:-1], W_dec.shape[-1])


class SAE(nn.Module):
    """A sparse autoencoder with weights ``W_enc`` (d_in, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_in), ``b_dec``.

    ``threshold`` (d_sae) is used by ``jumprelu`` and by ``batchtopk`` at inference.
    """

    stale_tokens: Tensor
    """(d_sae,) tokens since each latent last fired (a buffer; saved with checkpoints)."""

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        w = torch.randn(d_sae, d_in, generator=generator, dtype=dtype)
        w = w / w.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w.to(device))
        self.W_enc = nn.Parameter(w.t().clone().to(device))  # tied initialisation (Gao et al.)
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))
        # batchtopk learns its inference threshold as a running statistic, starting at 0.
        init = cfg.initial_threshold if cfg.architecture == "jumprelu" else 0.0
        self.log_threshold = nn.Parameter(
            torch.full((d_sae,), math.log(max(init, 1e-12)), dtype=dtype, device=device),
            requires_grad=cfg.architecture == "jumprelu",
        )
        # Steps since each latent last fired, for AuxK / dead-latent statistics.
        self.register_buffer("stale_tokens", torch.zeros(d_sae, dtype=torch.long, device=device))

    # ---- the rule -----------------------------------------------------------------------------
    @property
    def threshold(self) -> Tensor:
        """(d_sae,) JumpReLU / BatchTopK-inference threshold in the normalised scale."""
        return self.log_threshold.exp()

    def pre_acts(self, x: Tensor) -> Tensor:
        """(..., d_sae) encoder pre-activations of raw inputs ``x`` (..., d_in)."""
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE expects inputs of width d_in={self.cfg.d_in}, got {x.shape[-1]}")
        x = x.to(self.W_enc.dtype) * self.cfg.scaling_factor
        # (x - b_dec) @ W_enc, written so that b_dec's gradient is a vector product, not a batch GEMM
        return x @ self.W_enc - self.b_dec @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor, *, training: bool | None = None) -> Tensor:
        """Apply the activation rule to pre-activations."""
        training = self.training if training is None else training
        arch = self.cfg.architecture
        if arch == "standard":
            return pre.relu()
        if arch == "topk":
            return topk_codes(pre, int(self.cfg.k))  # type: ignore[arg-type]
        if arch == "batchtopk":
            if training:
                flat = pre.relu().reshape(-1, pre.shape[-1])
                n = min(flat.numel(), int(self.cfg.k) * flat.shape[0])  # type: ignore[arg-type]
                vals, idx = flat.flatten().topk(n, sorted=False)
                return torch.zeros_like(flat).flatten().scatter(0, idx, vals).reshape(pre.shape)
            return pre * (pre > self.threshold).to(pre.dtype)
        theta = self.log_threshold.exp()
        return _JumpReLU.apply(pre.relu(), theta, self.cfg.bandwidth)  # type: ignore[no-any-return]

    def encode(self, x: Tensor) -> Tensor:
        """(..., d_in) raw activations -> (..., d_sae) sparse code."""
        return self.activate(self.pre_acts(x))

    def decode(self, z: Tensor) -> Tensor:
        """(..., d_sae) code -> (..., d_in) reconstruction in the input's scale."""
        return (z @ self.W_dec + self.b_dec) / self.cfg.scaling_factor

    # ---- training objective ------------------------------------------------------------------
    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None) -> SAEOutput:
        """Encode, decode and compute the loss on a batch (..., d_in).

        ``dead_mask`` (d_sae,) bool marks latents the AuxK loss may use (topk/batchtopk).
        """
        pre = self.pre_acts(x)
        xs = x.to(self.W_enc.dtype) * self.cfg.scaling_factor
        if self.cfg.architecture == "topk":
            # decode by index-gather: k decoder rows per token instead of a dense (batch, d_sae) product
            vals, idx = pre.topk(int(self.cfg.k), dim=-1, sorted=False)  # type: ignore[arg-type]
            vals = vals.relu()
            z = torch.zeros_like(pre).scatter(-1, idx, vals)
            recon_s = _gather_decode(vals, idx, self.W_dec) + self.b_dec
        else:
            z = self.activate(pre)
            recon_s = z @ self.W_dec + self.b_dec
        err = recon_s - xs
        mse = err.pow(2).sum(-1).mean()
        cfg = self.cfg
        zero = mse.new_zeros(())
        if cfg.architecture == "standard":
            sparsity = cfg.l1_coeff * (z * self.W_dec.norm(dim=-1)).sum(-1).mean()
        elif cfg.architecture == "jumprelu":
            sparsity = cfg.l0_coeff * _Step.apply(pre.relu(), self.log_threshold.exp(), cfg.bandwidth).sum(-1).mean()
        else:
            sparsity = zero
        aux = zero
        if cfg.architecture in ("topk", "batchtopk") and dead_mask is not None and bool(dead_mask.any()):
            aux = self._auxk(pre, -err.detach(), dead_mask)
        loss = mse + sparsity + aux
        return SAEOutput(recon_s / cfg.scaling_factor, z, loss, {"mse": mse, "sparsity": sparsity, "aux": aux})

    def _auxk(self, pre: Tensor, residual: Tensor, dead_mask: Tensor) -> Tensor:
        """AuxK (Gao et al. 2024): dead latents' top-k_aux reconstruct the residual error."""
        k_aux = min(self.cfg.aux_k or self.cfg.d_in // 2, int(dead_mask.sum()))
        masked = torch.where(dead_mask, pre, torch.full_like(pre, -torch.inf))
        vals, idx = masked.topk(k_aux, dim=-1, sorted=False)
        e_hat = _gather_decode(vals.relu(), idx, self.W_dec)
        total_var = (residual - residual.mean(0)).pow(2).sum()
        scale = min(int(dead_mask.sum()) / k_aux, 1.0)
        return self.cfg.aux_coeff * scale * (e_hat - residual).pow(2).sum() / total_var.clamp(min=1e-12)

    # ---- decoder-norm constraint ----------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Project decoder rows back to unit norm (called after every optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the part of each decoder row's gradient along the row (it would only change its norm)."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        self.W_dec.grad.sub_((self.W_dec.grad * w).sum(-1, keepdim=True) * w)

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def extra_repr(self) -> str:
        c = self.cfg
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}" + (f", k={c.k}" if c.k else "") + (
            f", hook={c.hook_name}" if c.hook_name else ""
        )
