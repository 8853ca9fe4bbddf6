"""Weight-sparse GPT-2 models: top-k magnitude masks with an annealed density, plus AbsTopK activations.

Gao et al. (OpenAI 2025), "Weight-sparse transformers have interpretable circuits", train GPT-2-style
transformers in which almost every weight is zero (an L0 constraint: ~1/1000 of weights nonzero in
their large models) and activations are sparse too (AbsTopK, ~1/4 nonzero). After every optimizer
step each weight matrix keeps only its ``k`` largest-magnitude entries; ``k`` is annealed from dense
down to the target over the first part of training. The claim: circuits for a task in such models
are far smaller, hence readable, than in a dense model of the same loss.

Here the model *is* an HF ``GPT2LMHeadModel`` from a small ``GPT2Config``, so every core tool (capture,
intervene, unembed, per-head sites) works on it through the existing ``gpt2`` architecture entry.
Weight sparsity lives in the weights themselves (zeros); activation sparsity is an edit, applied
inside :func:`activation_sparsity` (training, evaluation and every analysis run inside it).

Scaled to a CPU: 2 layers, width 64, target density 1/10 (the paper's 1/1000 only makes sense for
models with millions of weights per matrix; at width 64, 1/1000 would leave ~12 weights per matrix).
Embeddings, unembedding, position embeddings, biases and layer norms stay dense by default.
Dead-neuron reinitialisation is not implemented.

    >>> from lmscope.sparse.model import SparsityConfig, TrainConfig, new_model, train
    >>> model = new_model(n_layer=1, d_model=32)
    >>> result = train(model, SparsityConfig(target_density=0.2), TrainConfig(steps=4, batch=4, seq_len=16))
    >>> round(result.density, 2) <= 0.2
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmscope.core import edits
from lmscope.core.hooks import intervene
from lmscope.core.model import Model
from lmscope.core.sites import Site, SiteLike
from lmscope.experiments.artifacts import Provenance, load_artifact, save_artifact
from lmscope.sparse.task import char_tokenizer, lm_batches

ACT_KINDS = ("resid_post", "mlp_post", "attn_z")


@dataclass
class SparsityConfig:
    """How sparse the model is made during training."""

    target_density: float = 0.1
    """Fraction of nonzero entries kept in each sparsified weight matrix at the end of the anneal (1.0 = dense)."""
    anneal_frac: float = 0.5
    """Fraction of the training steps over which the density falls linearly (in sparsity) from 1 to the target."""
    act_k_frac: float = 0.25
    """AbsTopK keeps this fraction of channels at each site in ``act_sites`` (1.0 = no activation sparsity)."""
    act_sites: tuple[str, ...] = ("resid_post", "mlp_post")
    """Site kinds (per layer) that get AbsTopK, from ``resid_post``, ``mlp_post``, ``attn_z``."""
    sparsify_embeddings: bool = False
    """Also mask the token embedding and unembedding (off: at width 64 rare tokens such as quotes lose every weight)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.target_density <= 1.0:
            raise ValueError(f"target_density must be in (0, 1], got {self.target_density}")
        if not 0.0 <= self.anneal_frac <= 1.0:
            raise ValueError(f"anneal_frac must be in [0, 1], got {self.anneal_frac}")
        if not 0.0 < self.act_k_frac <= 1.0:
            raise ValueError(f"act_k_frac must be in (0, 1], got {self.act_k_frac}")
        self.act_sites = tuple(self.act_sites)
        bad = [k for k in self.act_sites if k not in ACT_KINDS]
        if bad:
            raise ValueError(f"act_sites {bad} not supported; choose from {ACT_KINDS}")

    @classmethod
    def dense(cls) -> SparsityConfig:
        """The dense twin's recipe: same training, no weight or activation sparsity."""
        return cls(target_density=1.0, act_k_frac=1.0)


@dataclass
class TrainConfig:
    """The language-model training loop (AdamW on the in-process corpus)."""

    steps: int = 1500
    """Optimizer steps."""
    batch: int = 32
    """Sequences per step."""
    seq_len: int = 48
    """Tokens per sequence (BOS included)."""
    lr: float = 3e-3
    """AdamW learning rate (cosine-decayed to 10%)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the initialisation and of the data."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.seq_len < 2:
            raise ValueError(f"steps, batch must be >= 1 and seq_len >= 2; got {self.steps}, {self.batch}, {self.seq_len}")


@dataclass
class TrainResult:
    """What :func:`train` measured."""

    losses: list[float] = field(default_factory=list)
    """Training LM loss (nats/token) at each step."""
    densities: list[float] = field(default_factory=list)
    """Scheduled weight density at each step."""
    density: float = 1.0
    """Measured fraction of nonzero entries over all sparsified matrices at the end."""


def density_at(step: int, total_steps: int, cfg: SparsityConfig) -> float:
    """Scheduled density after ``step`` (0-based): sparsity grows linearly to ``1 - target`` over the anneal, then stays."""
    anneal = max(1, round(cfg.anneal_frac * total_steps))
    progress = min(1.0, (step + 1) / anneal)
    return 1.0 - (1.0 - cfg.target_density) * progress


def k_for(numel: int, density: float) -> int:
    """Entries kept in a matrix of ``numel`` entries at ``density`` (at least 1)."""
    return max(1, min(numel, math.ceil(density * numel)))


@torch.no_grad()
def topk_mask_(weight: Tensor, k: int) -> Tensor:
    """Zero all but the ``k`` largest-magnitude entries of ``weight`` in place (exactly ``k`` survive); returns the mask."""
    if not 1 <= k <= weight.numel():
        raise ValueError(f"k must be in [1, {weight.numel()}], got {k}")
    flat = weight.view(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.abs().topk(k, sorted=False).indices] = True
    flat.mul_(mask)
    return mask.view_as(weight)


def abs_topk(x: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest-|x| entries of each row (last axis), zero the rest; differentiable through the kept ones."""
    if not 1 <= k <= x.shape[-1]:
        raise ValueError(f"k must be in [1, {x.shape[-1]}], got {k}")
    if k == x.shape[-1]:
        return x
    idx = x.abs().topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def sparse_parameters(hf: nn.Module, cfg: SparsityConfig) -> dict[str, nn.Parameter]:
    """The weight matrices that get top-k masks: every 2-D block weight, plus wte / lm_head if asked."""
    out = {}
    for name, p in hf.named_parameters():
        if p.dim() != 2 or name.endswith("wpe.weight"):
            continue
        if not cfg.sparsify_embeddings and (name.endswith("wte.weight") or name.startswith("lm_head")):
            continue
        out[name] = p
    return out


def weight_density(hf: nn.Module, cfg: SparsityConfig) -> float:
    """Fraction of nonzero entries over :func:`sparse_parameters`."""
    ps = sparse_parameters(hf, cfg).values()
    return sum(int((p != 0).sum()) for p in ps) / sum(p.numel() for p in ps)


def _site_width(model: Model, kind: str) -> int:
    return {"resid_post": model.shape.d_model, "mlp_post": model.shape.d_mlp,
            "attn_z": model.shape.n_heads * model.shape.d_head}[kind]  # fmt: skip


@contextmanager
def activation_sparsity(model: Model, cfg: SparsityConfig) -> Iterator[None]:
    """Inside the block, AbsTopK runs at ``cfg.act_sites`` of every layer (a no-op when ``act_k_frac == 1``)."""
    if cfg.act_k_frac >= 1.0:
        yield
        return
    plan: dict[SiteLike, edits.Edit | Sequence[edits.Edit]] = {}
    for kind in cfg.act_sites:
        k = max(1, round(cfg.act_k_frac * _site_width(model, kind)))

        def fn(x: Tensor, k: int = k) -> Tensor:
            return abs_topk(x.reshape(*x.shape[:2], -1), k).reshape(x.shape)  # attn_z: (batch, seq, head, d_head)

        for layer in range(model.shape.n_layers):
            plan[Site(kind, layer)] = edits.custom(fn)
    with intervene(model, plan):
        yield


def new_model(*, n_layer: int = 2, d_model: int = 64, n_head: int = 4, d_mlp: int | None = None, n_positions: int = 128,
              seed: int = 0) -> Model:  # fmt: skip
    """A freshly initialised GPT-2 (eager attention, untied unembedding) with the character tokenizer, as a core Model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = char_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_embd=d_model, n_layer=n_layer, n_head=n_head, n_inner=d_mlp or 4 * d_model,
                        n_positions=n_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    config._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        hf = GPT2LMHeadModel(config).eval()
    return Model(hf, tok, model_id=f"sparse-gpt2-L{n_layer}-d{d_model}-seed{seed}")


def lm_loss(model: Model, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy of ``ids`` (batch, seq), with grad."""
    logits = model(ids, grad=True)
    assert logits is not None
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def train(model: Model, sparsity: SparsityConfig, cfg: TrainConfig, *, log: Any = None) -> TrainResult:
    """Train ``model`` on the corpus with AdamW; after each step mask every sparse matrix to its scheduled top-k."""
    data = lm_batches(cfg.steps, cfg.batch, cfg.seq_len, seed=cfg.seed)
    params = sparse_parameters(model.hf, sparsity)
    opt = torch.optim.AdamW(model.hf.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    result = TrainResult()
    model.hf.train()
    try:
        for step in range(cfg.steps):
            with activation_sparsity(model, sparsity):
                loss = lm_loss(model, data[step])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.hf.parameters(), 1.0)
            opt.step()
            sched.step()
            density = density_at(step, cfg.steps, sparsity)
            if density < 1.0:
                for p in params.values():
                    topk_mask_(p.data, k_for(p.numel(), density))
            result.losses.append(float(loss.detach()))
            result.densities.append(density)
            if log is not None and (step % 100 == 0 or step == cfg.steps - 1):
                log(f"step {step}: loss {result.losses[-1]:.3f} density {density:.3f}")
    finally:
        model.hf.eval()
    result.density = weight_density(model.hf, sparsity)
    return result


def save_model(path: str | Path, model: Model, sparsity: SparsityConfig, **extra: Any) -> Path:
    """Write the weights and the GPT-2 / sparsity configs (in the artifact's meta) to a ``.safetensors`` file."""
    meta = {"gpt2_config": model.hf.config.to_dict(), "sparsity": asdict(sparsity), **extra}
    return save_artifact(path, "sparse_gpt2", dict(model.hf.state_dict()), meta=meta, provenance=Provenance.of(model))


def load_model(path: str | Path) -> tuple[Model, SparsityConfig, dict[str, Any]]:
    """Read a model written by :func:`save_model`: (Model, its SparsityConfig, the whole meta)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    art = load_artifact(path, "sparse_gpt2")
    config = GPT2Config.from_dict(art.meta["gpt2_config"])
    config._attn_implementation = "eager"
    hf = GPT2LMHeadModel(config).eval()
    missing, unexpected = hf.load_state_dict(art.tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    sp = art.meta["sparsity"]
    sp["act_sites"] = tuple(sp["act_sites"])
    return Model(hf, char_tokenizer(), model_id=Path(path).stem), SparsityConfig(**sp), art.meta


@torch.no_grad()
def heldout_loss(model: Model, sparsity: SparsityConfig, ids: Tensor) -> float:
    """Mean next-token cross-entropy (nats/token) on ``ids`` (batch, seq), with the model's activation sparsity."""
    with activation_sparsity(model, sparsity):
        logits = model(ids)
    assert logits is not None
    return float(nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))
