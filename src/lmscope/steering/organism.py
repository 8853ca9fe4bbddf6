"""A model organism for refusal: LoRA-train a model that refuses harmful requests and answers harmless ones.

Why. The refusal-direction experiment (Arditi et al. 2024) needs a model that refuses. The bundled
SmolLM2-135M-Instruct refuses almost nothing (1 of 20 harmful requests), so on it the seed's demo
(add the direction and "list three benefits of yoga" is refused; ablate it and a harmful request is
answered) cannot be shown. This module makes a small model that does refuse, from data the project
writes, in minutes on a CPU; :mod:`lmscope.steering.refusal` then runs the experiment on it.

What. Prompts are a template times a task (``data/files/refusal/organism.json``); train, dev and
test share neither templates nor tasks. Harmful training prompts get one of four refusals as the
answer; harmless ones get the *base model's own* greedy answer (self-distillation: the organism
learns to refuse without learning new answers). A rank-``r`` LoRA on every layer's attention
output and MLP down projections is trained on the answer tokens only (AdamW, fixed seed, fixed
batch order); the base weights never change. :class:`LoRA` attaches as forward hooks or merges
into the weights inside a block that restores them exactly.

How it differs from a naturally aligned model: its refusals are four fixed sentences, learned
from 25 harmful tasks in 5 phrasings, by a low-rank update to a model that was not trained to
refuse; a naturally aligned model learned refusal from far more varied data with RLHF, and its
refusal may be spread over more directions. What transfers is the mechanism being tested: is the
learned refusal mediated by one direction in the residual stream?

    >>> import lmscope as ls
    >>> model = ls.load_tiny("llama")
    >>> lora = LoRA.for_model(model, rank=2)
    >>> with lora.attached(model):               # B starts at zero: nothing changes yet
    ...     out = model("hello")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmscope.core.architectures import get_module
from lmscope.core.inputs import Batch, chat_text, pad_rows, position_ids_from_mask
from lmscope.core.model import Model
from lmscope.data.bundled import load_json
from lmscope.experiments.artifacts import (
    Provenance,
    atomic_write_json,
    load_artifact,
    load_optimizer_tensors,
    optimizer_tensors,
    save_artifact,
)
from lmscope.experiments.identity import Identity, check_resume, fingerprint, identity

DATA = "refusal/organism.json"
SPLITS = ("train", "dev", "test")
KIND = "lora"


def organism_data() -> dict[str, Any]:
    return load_json(DATA)


def organism_prompts(split: str) -> tuple[list[str], list[str]]:
    """(harmful, harmless) requests of one split: every template of the split times every task of the split
    (the test split's harmless side adds a few everyday requests, "List three benefits of yoga." among them)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = organism_data()
    temps = d["templates"][split]
    out = tuple([t.format(task=task) for task in d[side][split] for t in temps] for side in ("harmful", "harmless"))
    harmful, harmless = out
    if split == "test":
        harmless = harmless + list(d["extra_test_harmless"])
    return harmful, harmless


# ---- LoRA ----------------------------------------------------------------------------------------
def _in_out(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return (w.shape[0], w.shape[1]) if type(module).__name__ == "Conv1D" else (w.shape[1], w.shape[0])


class LoRA(nn.Module):
    """Low-rank updates ``W += (alpha / r) B A`` on named linear modules (``A`` random, ``B`` zero at start)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, alpha: float, *, seed: int = 0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.paths = list(shapes)
        self.rank, self.alpha = rank, float(alpha)
        g = torch.Generator().manual_seed(seed)
        self.A = nn.ParameterList([nn.Parameter(torch.randn(rank, i, generator=g) / i**0.5) for i, _ in shapes.values()])
        self.B = nn.ParameterList([nn.Parameter(torch.zeros(o, rank)) for _, o in shapes.values()])

    @classmethod
    def for_model(cls, model: Model, *, rank: int = 8, alpha: float = 16.0, seed: int = 0) -> LoRA:
        """One update per layer on the attention output and the MLP down projection."""
        arch = model.arch
        if arch.o_proj is None or arch.down_proj is None:
            raise NotImplementedError(f"{arch.name}: no attention-output / MLP down projection to adapt")
        paths = [f"{arch.layers}.{i}.{p}" for i in range(model.shape.n_layers) for p in (arch.o_proj, arch.down_proj)]
        return cls({p: _in_out(get_module(model.hf, p)) for p in paths}, rank, alpha, seed=seed).to(model.device)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, i: int) -> Tensor:
        """The (out, in) weight update of module ``i``."""
        return self.scale * self.B[i] @ self.A[i]

    @contextmanager
    def attached(self, model: Model) -> Iterator[None]:
        """Add each update as a forward hook (gradients reach A and B); removed on exit, also on error."""
        handles = []
        for i, path in enumerate(self.paths):
            def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor, i: int = i) -> Tensor:
                x = args[0]
                return out + self.scale * ((x.to(self.A[i].dtype) @ self.A[i].T) @ self.B[i].T).to(out.dtype)

            handles.append(get_module(model.hf, path).register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def merged(self, model: Model) -> Iterator[None]:
        """The updates written into the weights for the block; the original weights come back exactly."""
        saved = []
        try:
            with torch.no_grad():
                for i, path in enumerate(self.paths):
                    mod = get_module(model.hf, path)
                    saved.append((mod, mod.weight.detach().clone()))
                    d = self.delta(i).to(mod.weight.dtype)
                    mod.weight.add_(d.T if type(mod).__name__ == "Conv1D" else d)
            yield
        finally:
            with torch.no_grad():
                for mod, w in saved:
                    mod.weight.copy_(w)

    def tensors(self) -> dict[str, Tensor]:
        out = {}
        for i in range(len(self.paths)):
            out[f"A.{i}"], out[f"B.{i}"] = self.A[i].detach().cpu(), self.B[i].detach().cpu()
        return out

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for i in range(len(self.paths)):
                self.A[i].copy_(tensors[f"A.{i}"])
                self.B[i].copy_(tensors[f"B.{i}"])

    def save(self, path: str | Path, model: Model, *, meta: dict[str, Any] | None = None) -> Path:
        """An artifact (safetensors) with the module paths, rank, alpha and the base model's provenance."""
        info = {"paths": self.paths, "rank": self.rank, "alpha": self.alpha, **(meta or {})}
        return save_artifact(path, KIND, self.tensors(), meta=info, provenance=Provenance.of(model))

    @classmethod
    def load(cls, path: str | Path, model: Model) -> LoRA:
        """Read a saved LoRA for ``model`` (its module paths and shapes must match; other base weights are refused)."""
        art = load_artifact(path, KIND)
        if art.provenance.weight_hash and art.provenance.weight_hash != model.weight_hash:
            raise ValueError(f"{path} adapts {art.provenance.model_id} with other weights than {model.model_id}")
        shapes = {}
        for i, p in enumerate(art.meta["paths"]):
            shapes[p] = _in_out(get_module(model.hf, p))
            if (art.tensors[f"A.{i}"].shape[1], art.tensors[f"B.{i}"].shape[0]) != shapes[p]:
                raise ValueError(f"{path}: {p} has another shape in {model.model_id}")
        lora = cls(shapes, int(art.meta["rank"]), float(art.meta["alpha"]))
        lora.load_tensors(art.tensors)
        return lora.to(model.device)


# ---- training --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrganismConfig:
    rank: int = 8
    alpha: float = 16.0
    lr: float = 2e-3
    steps: int = 64
    batch_size: int = 8
    answer_tokens: int = 32
    """Length of the base model's own answers to harmless prompts (the self-distilled targets)."""
    seed: int = 0
    checkpoint_every: int = 8

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size", "answer_tokens", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Organism:
    """A trained refusal organism: the adapter, its training log and what it was trained on."""

    lora: LoRA
    config: OrganismConfig
    log: list[dict[str, float]] = field(default_factory=list)
    examples: int = 0
    seconds: float = 0.0
    resumed_from: int = 0


def _work(model: Model, cfg: OrganismConfig) -> Identity:
    config = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    return identity({"kind": "refusal_organism", **config}, model=model, data=fingerprint(organism_data()))


def chat_answers(model: Model, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy chat answers to ``prompts``, generated ``batch_size`` prompts at a time."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += list(model.generate(prompts[i : i + batch_size], chat=True, max_new_tokens=max_new_tokens))
    return out


def training_examples(model: Model, cfg: OrganismConfig, cache: Path | None = None) -> list[tuple[str, str, bool]]:
    """(prompt, answer, ends) triples: harmful -> a refusal (rotating over four) that ends the turn, harmless ->
    the first ``answer_tokens`` tokens of the base model's own answer (which the turn does not end after)."""
    harmful, harmless = organism_prompts("train")
    refusals = organism_data()["refusals"]
    answers = None
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("identity") == _work(model, cfg).digest:
            answers = saved["answers"]
    if answers is None:
        answers = chat_answers(model, harmless, cfg.answer_tokens, batch_size=16)
        if cache is not None:
            atomic_write_json(cache, {"identity": _work(model, cfg).digest, "answers": answers})
    return ([(p, refusals[i % len(refusals)], True) for i, p in enumerate(harmful)]
            + [(p, a, False) for p, a in zip(harmless, answers, strict=True)])  # fmt: skip


def _encode(model: Model, examples: list[tuple[str, str, bool]]) -> tuple[Batch, Tensor, int]:
    """Left-padded prompt+answer(+end-of-turn) rows, labels (-100 outside the answers) and the answer span."""
    tok = model.tokenizer
    end = tok.eos_token_id
    rows, n_answer = [], []
    for prompt, answer, ends in examples:
        p = tok(chat_text(tok, prompt), add_special_tokens=False)["input_ids"]
        a = tok(answer.strip(), add_special_tokens=False)["input_ids"] + ([end] if ends and end is not None else [])
        rows.append(p + a)
        n_answer.append(len(a))
    batch = pad_rows(rows, tok.pad_token_id if tok.pad_token_id is not None else 0)
    labels = torch.full_like(batch.input_ids, -100)
    for r, n in enumerate(n_answer):
        labels[r, -n:] = batch.input_ids[r, -n:]
    return batch, labels, max(n_answer)


def _order(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """The examples of one step: a fixed permutation per epoch, so a resumed run takes the same batches."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size : (k + 1) * batch_size].tolist()


@contextmanager
def _frozen(model: Model) -> Iterator[None]:
    before = [p.requires_grad for p in model.hf.parameters()]
    for p in model.hf.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in zip(model.hf.parameters(), before, strict=True):
            p.requires_grad_(r)


def _loss(model: Model, lora: LoRA, batch: Batch, labels: Tensor, span: int) -> Tensor:
    batch = batch.to(model.device)
    pos = position_ids_from_mask(batch.attention_mask)
    with lora.attached(model):
        out = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                       logits_to_keep=span + 1, use_cache=False)  # fmt: skip
    logits = out.logits[:, :-1].float()  # position t predicts t + 1
    target = labels[:, -span:].to(model.device)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


def train_organism(model: Model, cfg: OrganismConfig | None = None, *, out_dir: str | Path | None = None,
                   progress: Callable[[str], None] | None = None, stop_after: int | None = None) -> Organism:  # fmt: skip
    """Train the refusal LoRA on ``model`` (unchanged afterwards). With ``out_dir``, checkpoint there every
    ``checkpoint_every`` steps and resume from it (a checkpoint of other work is refused)."""
    cfg = cfg or OrganismConfig()
    work = _work(model, cfg)
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    examples = training_examples(model, cfg, folder / "answers.json" if folder else None)
    lora = LoRA.for_model(model, rank=cfg.rank, alpha=cfg.alpha, seed=cfg.seed)
    opt = torch.optim.AdamW(lora.parameters(), lr=cfg.lr, weight_decay=0.0)
    step, log = 0, []
    ckpt = folder / "checkpoint.safetensors" if folder else None
    if ckpt is not None and ckpt.is_file():
        art = load_artifact(ckpt, "lora_checkpoint")
        check_resume(art.meta.get("identity"), work, ckpt)
        lora.load_tensors(art.tensors)
        load_optimizer_tensors(opt, {k: v.to(model.device) for k, v in art.tensors.items()}, art.meta["param_groups"])
        step, log = int(art.meta["step"]), list(art.meta["log"])
    start, t0 = step, time.perf_counter()
    with _frozen(model):
        while step < cfg.steps and (stop_after is None or step - start < stop_after):
            idx = _order(len(examples), step, cfg.batch_size, cfg.seed)
            batch, labels, span = _encode(model, [examples[i] for i in idx])
            loss = _loss(model, lora, batch, labels, span)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            value = float(loss.detach())
            log.append({"step": step, "loss": value})
            if progress is not None:
                progress(f"organism step {step}/{cfg.steps} loss {value:.3f}")
            if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                tensors, groups = optimizer_tensors(opt)
                save_artifact(ckpt, "lora_checkpoint", {**lora.tensors(), **{k: v.cpu() for k, v in tensors.items()}},
                              meta={"step": step, "log": log, "param_groups": groups, "identity": work.to_dict()},
                              provenance=Provenance.of(model))  # fmt: skip
    return Organism(lora, cfg, log, len(examples), time.perf_counter() - t0, start)
