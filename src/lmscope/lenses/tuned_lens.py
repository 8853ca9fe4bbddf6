"""Tuned lens: one learned affine translator per layer before the unembedding.

What it is. The logit lens assumes every layer speaks the final layer's "language"; early layers
do not, so the raw lens shows junk until late. Belrose et al. 2023 ("Eliciting Latent Predictions
from Transformers with the Tuned Lens") train, for each layer l, an affine map
``T_l(h) = h + A_l h + b_l`` (initialised to the identity: ``A_l = 0, b_l = 0``) so that
``unembed(T_l(h_l))`` matches the model's own output distribution, minimising
KL(final || lens) on ordinary text. The model is frozen; only the translators learn.

Here: the corpus is the Python standard library's source text (``lmscope.data.corpus``: installed
with Python, nothing is downloaded; a held-out split by file hash). Training shows a progress bar,
writes a checkpoint every ``checkpoint_every`` steps and resumes from it; the trained lens is an
artifact (safetensors + provenance). :func:`compare_lenses` evaluates logit and tuned lens side by
side on held-out text: KL(final || lens) and top-1 agreement with the model, per layer.

Assumptions and choices.
- Translators read ``resid_post``; the last layer's translator stays the identity (the logit lens
  is already exact there).
- The first position of each window is left out of the loss and the evaluation: it is an
  attention sink with an atypical, very large residual norm.
- On CPU the training logits are computed with a bfloat16 copy of the unembedding (about twice as
  fast); evaluation always uses the model's own fp32 ``unembed``.
- Budgets here are small (tens of thousands of tokens, not the paper's hundreds of millions), so
  the lens is a reduced replication; the held-out comparison says how much it gains.

Example::

    >>> import lmscope as ls
    >>> from lmscope.lenses.tuned_lens import TunedLens, TunedLensConfig, train_tuned_lens
    >>> model = ls.load_tiny("llama")
    >>> lens = train_tuned_lens(model, TunedLensConfig(train_tokens=256, seq_len=32, batch_size=2), progress=False)
    >>> res = lens.lens(model, "hello world")      # a LogitLensResult, decoded through the translators
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmscope.core.architectures import get_module
from lmscope.core.hooks import capture
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.data.corpus import describe_corpus, token_chunks
from lmscope.experiments import Identity, check_resume, identity
from lmscope.experiments.artifacts import (
    Provenance,
    load_artifact,
    load_optimizer_tensors,
    optimizer_tensors,
    save_artifact,
)
from lmscope.lenses.logit_lens import LogitLensResult, Targets, logit_lens

KIND = "tuned_lens"
CHECKPOINT = "checkpoint.safetensors"
FINAL = "tuned_lens.safetensors"


@dataclass
class TunedLensConfig:
    """How to train a tuned lens."""

    train_tokens: int = 32_768
    """Training tokens (windows of ``seq_len``); steps = train_tokens // (seq_len * batch_size)."""
    seq_len: int = 64
    """Tokens per window."""
    batch_size: int = 4
    """Windows per optimizer step."""
    lr: float = 1e-3
    """Adam peak learning rate (linear warm-up, then linear decay to zero)."""
    warmup_steps: int = 10
    """Warm-up length in steps."""
    layers: tuple[int, ...] | None = None
    """Layers to train (default all but the last); the others stay the identity."""
    skip_first: int = 1
    """Leading positions of each window left out of the loss (attention sink)."""
    bf16_unembed: bool = True
    """Compute training logits with a bfloat16 unembedding (faster on CPU)."""
    sampled_vocab: int | None = 1024
    """Sampled-softmax training: score only the final distribution's top ``target_top`` tokens per
    position plus this many uniformly drawn other tokens (None: the exact full-vocabulary KL)."""
    target_top: int = 10
    """Top tokens per position of the model's output kept in the sampled KL."""
    checkpoint_every: int = 25
    """Write a checkpoint every this many steps (and at the end)."""
    seed: int = 0
    """Corpus order seed."""
    corpus: tuple[str, ...] = ()
    """Training text: named sources and/or user files (:mod:`lmscope.data.corpus`); empty: the default sources."""

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.batch_size < 1 or self.train_tokens < self.seq_len * self.batch_size:
            raise ValueError(f"need seq_len >= 2, batch_size >= 1 and train_tokens >= seq_len * batch_size "
                             f"({self.seq_len} * {self.batch_size}); got train_tokens={self.train_tokens}")  # fmt: skip
        if not 0 <= self.skip_first < self.seq_len - 1:
            raise ValueError(f"skip_first must be in [0, seq_len - 1), got {self.skip_first}")
        if self.lr <= 0 or self.checkpoint_every < 1 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, checkpoint_every >= 1 and warmup_steps >= 0")
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)

    @property
    def steps(self) -> int:
        return self.train_tokens // (self.seq_len * self.batch_size)


class TunedLens(nn.Module):
    """Per-layer affine translators ``T_l(h) = h + h @ weight[l].T + bias[l]`` for ``resid_post``."""

    def __init__(self, n_layers: int, d_model: int) -> None:
        super().__init__()
        # one parameter per layer: a layer's step then touches only its own gradient
        self.weights = nn.ParameterList([nn.Parameter(torch.zeros(d_model, d_model)) for _ in range(n_layers)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(d_model)) for _ in range(n_layers)])
        self.meta: dict[str, Any] = {}

    @classmethod
    def identity(cls, model: Model) -> TunedLens:
        """Untrained translators: decoding through them is exactly the logit lens."""
        return cls(model.shape.n_layers, model.shape.d_model).to(model.device)

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def d_model(self) -> int:
        return self.weights[0].shape[0]

    @property
    def weight(self) -> Tensor:
        """(layer, d_model, d_model) all translators' matrices A_l (detached)."""
        return torch.stack([w.detach() for w in self.weights])

    @property
    def bias(self) -> Tensor:
        """(layer, d_model) all translators' biases b_l (detached)."""
        return torch.stack([b.detach() for b in self.biases])

    def forward(self, layer: int, h: Tensor) -> Tensor:
        """Translate (..., d_model) hidden states of ``resid_post`` at ``layer``."""
        w, b = self.weights[layer], self.biases[layer]
        return h + (h.to(w.dtype) @ w.T + b).to(h.dtype)

    def translate(self, site: Site, h: Tensor) -> Tensor:
        """A :data:`~lmscope.lenses.logit_lens.Translator` for ``logit_lens``."""
        if site.kind != "resid_post" or site.layer is None:
            raise ValueError(f"this tuned lens translates resid_post, not {site}")
        return self(site.layer, h)

    @torch.no_grad()
    def lens(self, model: Model, prompts: str | Sequence[str], target: Targets = None, *, k: int = 5,
             chat: bool = False) -> LogitLensResult:  # fmt: skip
        """Decode every layer through the translators (same result type as ``logit_lens``)."""
        self._check(model)
        return logit_lens(model, prompts, target, k=k, chat=chat, translator=self.translate, lens_name="tuned")

    @torch.no_grad()
    def _set(self, weight: Tensor, bias: Tensor) -> None:
        for layer in range(self.n_layers):
            self.weights[layer].copy_(weight[layer])
            self.biases[layer].copy_(bias[layer])

    def _check(self, model: Model) -> None:
        if (self.n_layers, self.d_model) != (model.shape.n_layers, model.shape.d_model):
            raise ValueError(f"tuned lens is for {self.n_layers} layers x d_model {self.d_model}; the model has "
                             f"{model.shape.n_layers} x {model.shape.d_model}")  # fmt: skip

    def save(self, path: str | Path, model: Model, *, meta: dict[str, Any] | None = None) -> Path:
        """Write the translators and their provenance (model, corpus, config) as an artifact."""
        info = {**self.meta, **(meta or {}), "n_layers": self.n_layers, "d_model": self.d_model, "site": "resid_post"}
        corpus = info.get("corpus")
        prov = Provenance.of(model, site="resid_post", dataset=corpus, corpus=corpus)
        return save_artifact(path, KIND, {"weight": self.weight, "bias": self.bias}, meta=info, provenance=prov)

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> TunedLens:
        """Read a saved lens; with ``model``, check its shape and warn if its weights differ."""
        art = load_artifact(path, KIND)
        w, b = art.tensors["weight"], art.tensors["bias"]
        lens = cls(w.shape[0], w.shape[1])
        lens._set(w, b)
        lens.meta = dict(art.meta)
        lens.meta["provenance"] = asdict(art.provenance)
        if model is not None:
            lens._check(model)
            if art.provenance.weight_hash and art.provenance.weight_hash != model.weight_hash:
                warnings.warn(f"{path} was trained on {art.provenance.model_id} with other weights than "
                              f"{model.model_id}", stacklevel=2)  # fmt: skip
            lens = lens.to(model.device)
        return lens


@contextmanager
def _frozen(model: Model) -> Iterator[None]:
    """Turn off gradients for the model's parameters for the block, then restore them exactly."""
    params = [p for p in model.hf.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _lr(step: int, cfg: TunedLensConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * max(0.0, 1.0 - (step - cfg.warmup_steps) / span)


def _save_checkpoint(path: Path, lens: TunedLens, opt: torch.optim.Optimizer, step: int, cfg: TunedLensConfig,
                     losses: list[float], model: Model) -> None:  # fmt: skip
    tensors = {"weight": lens.weight, "bias": lens.bias, **optimizer_tensors(opt)[0]}
    meta = {"step": step, "config": _config_json(cfg), "losses": losses, "identity": _identity(model, cfg).to_dict()}
    save_artifact(path, "tuned_lens_checkpoint", tensors, meta=meta, provenance=Provenance.of(model, site="resid_post"))


def _config_json(cfg: TunedLensConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def _identity(model: Model, cfg: TunedLensConfig) -> Identity:
    """Settings, the model's weights and the training text: what a tuned-lens checkpoint was computed from."""
    config = {k: v for k, v in _config_json(cfg).items() if k not in ("checkpoint_every",)}
    return identity({"kind": "tuned_lens_training", **config}, model=model,
                    data=describe_corpus(split="train", seed=cfg.seed, sources=cfg.corpus))  # fmt: skip


def _load_checkpoint(path: Path, lens: TunedLens, opt: torch.optim.Optimizer, cfg: TunedLensConfig,
                     model: Model) -> tuple[int, list[float]]:  # fmt: skip
    art = load_artifact(path, "tuned_lens_checkpoint")
    check_resume(art.meta.get("identity"), _identity(model, cfg), path)
    lens._set(art.tensors["weight"], art.tensors["bias"])
    load_optimizer_tensors(opt, art.tensors)
    return int(art.meta["step"]), list(art.meta["losses"])


def train_tuned_lens(
    model: Model,
    config: TunedLensConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TunedLens:
    """Train translators on the stdlib corpus's train split; resume from ``out/checkpoint.safetensors``.

    Args:
        model: the frozen model.
        config: budget and optimizer settings.
        out: folder for checkpoints and the final ``tuned_lens.safetensors`` (None: keep in memory).
        progress: show a tqdm progress bar.
        stop_after: run at most this many steps in this call, checkpoint, and return (time-boxing).
    """
    cfg = config or TunedLensConfig()
    n = model.shape.n_layers
    layers = [layer for layer in (cfg.layers if cfg.layers is not None else range(n - 1)) if layer != n - 1]
    if any(not 0 <= layer < n for layer in layers):
        raise ValueError(f"layers {cfg.layers} out of range for a model with {n} layers")
    lens = TunedLens.identity(model)
    opt = torch.optim.Adam([p for layer in layers for p in (lens.weights[layer], lens.biases[layer])], lr=cfg.lr)
    folder = None if out is None else Path(out)
    step, losses = 0, list[float]()
    if folder is not None and (folder / CHECKPOINT).is_file():
        step, losses = _load_checkpoint(folder / CHECKPOINT, lens, opt, cfg, model)
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    head = get_module(model.hf, model.arch.lm_head)
    norm = get_module(model.hf, model.arch.final_norm) if model.arch.final_norm else None
    weight: Tensor = head.weight  # type: ignore[assignment]
    w_head = weight.detach().to(torch.bfloat16 if cfg.bf16_unembed else weight.dtype)
    sites = [Site("resid_post", layer) for layer in layers]
    chunks = token_chunks(model.tokenizer, cfg.seq_len, (end - step) * cfg.batch_size, seed=cfg.seed, split="train",
                          prepend_bos=False, start=step * cfg.batch_size, sources=cfg.corpus)  # fmt: skip
    bar = _bar(progress, total=cfg.steps, initial=step)
    t0 = time.time()
    with _frozen(model):
        while step < end:
            ids = torch.stack([next(chunks) for _ in range(cfg.batch_size)]).to(model.device)
            with capture(model, sites) as acts:
                final = model(ids)
            assert final is not None
            target = final[:, cfg.skip_first :].float().log_softmax(-1)  # (batch, seq, vocab)
            kl_fn = _KL(target, w_head, cfg, step)
            for g in opt.param_groups:
                g["lr"] = _lr(step, cfg)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for site in sites:
                h = lens(site.layer, acts[site][:, cfg.skip_first :])
                kl = kl_fn(model, norm(h) if norm is not None else h, head)
                kl.backward()
                total += float(kl.detach())
            opt.step()
            step += 1
            losses.append(round(total / max(1, len(sites)), 5))
            bar.update(1)
            bar.set_postfix(mean_kl=f"{losses[-1]:.3f}")
            if folder is not None and (step % cfg.checkpoint_every == 0 or step == end):
                _save_checkpoint(folder / CHECKPOINT, lens, opt, step, cfg, losses, model)
    bar.close()
    lens.meta = {"config": asdict(cfg), "trained_layers": layers, "steps_done": step, "train_losses": losses,
                 "corpus": describe_corpus(split="train", seed=cfg.seed, sources=cfg.corpus),
                 "seconds": round(time.time() - t0, 1)}  # fmt: skip
    if folder is not None and step >= cfg.steps:
        lens.save(folder / FINAL, model)
    return lens


class _KL:
    """KL(final || lens) for one training batch, exact or by sampled softmax.

    Sampled: the candidate tokens are the union of the model's top ``target_top`` tokens over the
    batch (where nearly all of the final distribution's mass is) plus ``sampled_vocab`` uniformly
    drawn others, whose exponentials stand in for the rest of the vocabulary in the lens's
    normaliser (scaled by rest / drawn). The draw is seeded by (seed, step), so a resumed run draws
    the same tokens. Mass of the final distribution outside the candidates is left out.
    """

    def __init__(self, target: Tensor, w_head: Tensor, cfg: TunedLensConfig, step: int) -> None:
        vocab = target.shape[-1]
        self.target = target
        self.idx: Tensor | None = None
        self.n_top = vocab
        if cfg.sampled_vocab is not None and cfg.target_top + cfg.sampled_vocab < vocab:
            top = target.topk(cfg.target_top, dim=-1).indices.unique()
            rest = torch.ones(vocab, dtype=torch.bool, device=target.device)
            rest[top] = False
            others = rest.nonzero()[:, 0]
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            n = min(cfg.sampled_vocab, others.numel())
            drawn = others[torch.randperm(others.numel(), generator=gen)[:n].to(others.device)]
            self.idx, self.n_top = torch.cat([top, drawn]), top.numel()
            self.correction = math.log(others.numel() / max(1, n))
            self.target = target[..., top]
        self.p = self.target.exp()
        self.neg_entropy = (self.p * self.target).sum(-1).mean()  # the part of the KL the lens cannot change
        self.w = w_head if self.idx is None else w_head[self.idx]  # (candidates, d_model)

    def __call__(self, model: Model, x: Tensor, head: nn.Module) -> Tensor:
        logits = x.to(self.w.dtype) @ self.w.T
        bias = getattr(head, "bias", None)
        if bias is not None:
            logits = logits + (bias if self.idx is None else bias[self.idx]).to(logits.dtype)
        logits = logits.float()
        cap = getattr(model.hf.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        if self.idx is None:
            logq = logits.log_softmax(-1)
        else:
            k = self.n_top
            log_z = torch.cat([logits[..., :k], logits[..., k:] + self.correction], dim=-1).logsumexp(-1, keepdim=True)
            logq = logits[..., :k] - log_z
        return self.neg_entropy - (self.p * logq).sum(-1).mean()


def _bar(enabled: bool, total: int, initial: int) -> Any:
    from lmscope.experiments.progress import bar

    return bar(total, "tuned lens", initial=initial, unit="step", enabled=enabled)


__all__ = ["TunedLens", "TunedLensConfig", "train_tuned_lens"]
