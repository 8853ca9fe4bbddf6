"""Bridges: per-layer maps between a dense model's residual stream and a weight-sparse model's.

Gao et al. (2025) tie a sparse model to an existing dense one with one bridge per layer: an encoder
(linear + AbsTopK) takes the dense residual to the sparse model's (activation-sparse) residual, a
decoder (linear) takes it back. They train with (1) reconstruction MSE in both directions and (2) a
KL term: splice the bridged activation into the *other* model's forward pass and compare its
next-token distribution with the unedited one. A feature read in the sparse model can then be
edited and carried back to the dense model through the decoder.

Here both models are frozen and only the bridges learn (the paper trains the sparse model jointly).
Activations are ``resid_post`` of each layer; splicing uses ``lmscope.core.hooks.intervene`` with a
``custom`` edit, so gradients of the KL flow through the frozen model into the bridge. Reported per
layer: FVU (fraction of variance unexplained) of both maps, and KL(original || spliced) both ways,
next to the KL of mean-ablating that layer (the scale a useless bridge would reach).

    >>> import torch
    >>> from lmscope.sparse.bridge import BridgeConfig, fit_bridge, fvu
    >>> dense = torch.randn(512, 8); sparse = dense @ torch.randn(8, 8)
    >>> bridge = fit_bridge(dense, sparse, BridgeConfig(k_frac=1.0, steps=300, lr=1e-2))
    >>> float(fvu(bridge.encode(dense), sparse)) < 0.05
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.metrics import kl_div
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.experiments.artifacts import load_artifact, save_artifact
from lmscope.sparse.model import SparsityConfig, abs_topk, activation_sparsity


@dataclass
class BridgeConfig:
    """Training one bridge."""

    k_frac: float = 0.25
    """AbsTopK of the encoder keeps this fraction of the sparse model's channels (match the sparse model's act_k_frac)."""
    steps: int = 300
    """Adam steps."""
    lr: float = 3e-3
    """Adam learning rate."""
    kl_coef: float = 1.0
    """Weight of the KL terms (0 = reconstruction only)."""
    seed: int = 0
    """Initialisation seed."""

    def __post_init__(self) -> None:
        if not 0.0 < self.k_frac <= 1.0 or self.steps < 1 or self.lr <= 0 or self.kl_coef < 0:
            raise ValueError("need 0 < k_frac <= 1, steps >= 1, lr > 0, kl_coef >= 0")


class Bridge(nn.Module):
    """encoder: dense (.., d_dense) -> AbsTopK(linear) (.., d_sparse); decoder: sparse -> linear -> dense."""

    def __init__(self, d_dense: int, d_sparse: int, k: int):
        super().__init__()
        self.enc = nn.Linear(d_dense, d_sparse)
        self.dec = nn.Linear(d_sparse, d_dense)
        self.k = k

    def encode(self, dense: Tensor) -> Tensor:
        """Dense residual -> sparse-model residual."""
        return abs_topk(self.enc(dense), self.k)

    def decode(self, sparse: Tensor) -> Tensor:
        """Sparse-model residual -> dense residual."""
        return self.dec(sparse)


def fvu(pred: Tensor, target: Tensor) -> Tensor:
    """Fraction of variance unexplained: ||pred - target||^2 / ||target - mean(target)||^2 over all rows."""
    t = target.reshape(-1, target.shape[-1])
    return (pred.reshape_as(t) - t).pow(2).sum() / (t - t.mean(0)).pow(2).sum().clamp_min(1e-12)


def fit_bridge(dense: Tensor, sparse: Tensor, cfg: BridgeConfig, kl_fn: Callable[[Bridge], Tensor] | None = None) -> Bridge:
    """Train a bridge on paired activations (n, d_dense) / (n, d_sparse): normalised MSE both ways (+ ``kl_coef * kl_fn``)."""
    if dense.shape[:-1] != sparse.shape[:-1]:
        raise ValueError(f"paired activations need the same leading shape, got {tuple(dense.shape)} and {tuple(sparse.shape)}")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        bridge = Bridge(dense.shape[-1], sparse.shape[-1], max(1, round(cfg.k_frac * sparse.shape[-1])))
    opt = torch.optim.Adam(bridge.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        loss = fvu(bridge.encode(dense), sparse) + fvu(bridge.decode(sparse), dense)
        if kl_fn is not None and cfg.kl_coef > 0:
            loss = loss + cfg.kl_coef * kl_fn(bridge)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return bridge


@dataclass
class LayerBridgeResult:
    """One layer's bridge, measured on held-out tokens."""

    layer: int
    fvu_dense_to_sparse: float
    """FVU of encode(dense resid) against the sparse model's resid."""
    fvu_sparse_to_dense: float
    """FVU of decode(sparse resid) against the dense model's resid."""
    kl_into_sparse: float
    """KL(sparse || sparse with encode(dense resid) spliced in), nats/token."""
    kl_into_dense: float
    """KL(dense || dense with decode(sparse resid) spliced in), nats/token."""
    kl_mean_ablate_sparse: float
    """Baseline: KL when the sparse resid is replaced by its mean."""
    kl_mean_ablate_dense: float
    """Baseline: KL when the dense resid is replaced by its mean."""


def _resid(model: Model, sp: SparsityConfig, ids: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    site = Site("resid_post", layer)
    with activation_sparsity(model, sp), capture(model, [site]) as acts:
        logits = model(ids)
    assert logits is not None
    return acts[site], logits


def _spliced_kl(model: Model, sp: SparsityConfig, ids: Tensor, layer: int, value: Tensor, ref: Tensor, grad: bool) -> Tensor:
    with activation_sparsity(model, sp), intervene(model, {Site("resid_post", layer): edits.custom(lambda x: value)}):
        logits = model(ids, grad=grad)
    assert logits is not None
    return kl_div(ref, logits).mean()


def train_bridges(dense: Model, dense_sp: SparsityConfig, sparse: Model, sparse_sp: SparsityConfig, train_ids: Tensor,
                  test_ids: Tensor, cfg: BridgeConfig) -> tuple[list[Bridge], list[LayerBridgeResult]]:  # fmt: skip
    """One bridge per layer (both models need the same number of layers), trained on ``train_ids`` (batch, seq)."""
    if dense.shape.n_layers != sparse.shape.n_layers:
        raise ValueError(f"layer counts differ: dense {dense.shape.n_layers}, sparse {sparse.shape.n_layers}")
    for m in (dense, sparse):
        m.hf.requires_grad_(False)
    bridges, results = [], []
    try:
        for layer in range(dense.shape.n_layers):
            hd, ld = _resid(dense, dense_sp, train_ids, layer)
            hs, ls_ = _resid(sparse, sparse_sp, train_ids, layer)

            def kl_fn(b: Bridge, hd: Tensor = hd, hs: Tensor = hs, ld: Tensor = ld, ls_: Tensor = ls_, layer: int = layer
                      ) -> Tensor:  # fmt: skip
                return (_spliced_kl(sparse, sparse_sp, train_ids, layer, b.encode(hd), ls_, True)
                        + _spliced_kl(dense, dense_sp, train_ids, layer, b.decode(hs), ld, True))  # fmt: skip

            bridge = fit_bridge(hd, hs, cfg, kl_fn)
            bridges.append(bridge)
            with torch.no_grad():
                td, tld = _resid(dense, dense_sp, test_ids, layer)
                ts, tls = _resid(sparse, sparse_sp, test_ids, layer)
                results.append(LayerBridgeResult(
                    layer, float(fvu(bridge.encode(td), ts)), float(fvu(bridge.decode(ts), td)),
                    float(_spliced_kl(sparse, sparse_sp, test_ids, layer, bridge.encode(td), tls, False)),
                    float(_spliced_kl(dense, dense_sp, test_ids, layer, bridge.decode(ts), tld, False)),
                    float(_spliced_kl(sparse, sparse_sp, test_ids, layer, ts.mean((0, 1)).expand_as(ts), tls, False)),
                    float(_spliced_kl(dense, dense_sp, test_ids, layer, td.mean((0, 1)).expand_as(td), tld, False)),
                ))  # fmt: skip
    finally:
        for m in (dense, sparse):
            m.hf.requires_grad_(True)
    return bridges, results


def save_bridges(path: str | Path, bridges: list[Bridge], cfg: BridgeConfig) -> Path:
    """Write per-layer bridges (``layer{i}.enc.weight`` ...) with their AbsTopK k in the meta."""
    tensors = {f"layer{i}.{k}": v for i, b in enumerate(bridges) for k, v in b.state_dict().items()}
    return save_artifact(path, "sparse_bridges", tensors, meta={"k": [b.k for b in bridges], "config": asdict(cfg),
                                                                "site": "resid_post"})  # fmt: skip


def load_bridges(path: str | Path) -> list[Bridge]:
    """Read bridges written by :func:`save_bridges` (the AbsTopK k comes from the file; a file without it is refused)."""
    art = load_artifact(path, "sparse_bridges")
    if "k" not in art.meta:
        raise ValueError(f"{path} stores no AbsTopK k for its encoders; refusing to guess the activation rule")
    out = []
    for i, k in enumerate(art.meta["k"]):
        w = art.tensors[f"layer{i}.enc.weight"]  # (d_sparse, d_dense)
        b = Bridge(w.shape[1], w.shape[0], int(k))
        b.load_state_dict({n.split(".", 1)[1]: t for n, t in art.tensors.items() if n.startswith(f"layer{i}.")})
        out.append(b)
    return out
