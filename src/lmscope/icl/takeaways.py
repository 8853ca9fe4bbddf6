"""Testing the "learning without training" takeaways with numbers: transfer, example choice, order, length.

The seed (Dherin et al. 2025, read as prompt engineering) claims: positive examples beat negative
ones, order matters (clear examples first), diverse examples beat similar ones, and a longer
context stops helping once the implicit update has converged. Each claim is turned into a
measurement on held-out queries of a task: first-token accuracy, the target token's probability,
and the size of the implicit update sum_l ||dW_l||_F = sum_l ||W_l dA_l|| / ||A_l(x)||.

:func:`transfer` asks whether the update is about the *task* or about the *query*: the context is
absorbed into every layer's weights for one query (:func:`lmscope.icl.rank1.absorb_context`) and
the edited model is then asked other queries of the same task, with no context.

    >>> import lmscope as ls
    >>> from lmscope.icl.tasks import load_task, FORMATS
    >>> from lmscope.icl.takeaways import run_condition
    >>> model = ls.load_tiny("llama")
    >>> task = load_task("antonyms")
    >>> r = run_condition(model, FORMATS["qa"], task.train[:2], task.test[:3])
    >>> 0.0 <= r.accuracy <= 1.0
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from lmscope.core.hooks import capture
from lmscope.core.metrics import kl_div
from lmscope.core.model import Model
from lmscope.icl.rank1 import _bos, _ids, absorb_context, applied, contextual_block
from lmscope.icl.tasks import Pair, PromptFormat, Task, answer_token, predict
from lmscope.icl.trajectory import _padded, first_matrix


@dataclass(frozen=True)
class ConditionResult:
    """One context condition evaluated on held-out queries."""

    name: str
    accuracy: float
    target_prob: float
    """Mean probability of the answer's first token."""
    dw_norm: float
    """Mean over queries of sum over layers of ||dW_l||_F."""
    n: int


def _logits_and_inputs(model: Model, rows: list[list[int]], layers: Sequence[int]) -> tuple[Tensor, Tensor]:
    sites = [contextual_block(model, layer).a_site for layer in layers]
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    logits_all, a_all = [], []
    for i in range(0, len(rows), 16):
        batch = _padded(rows[i : i + 16], pad, model.shape.max_positions).to(model.device)
        with capture(model, sites) as acts:
            logits = model(batch)
        assert logits is not None
        last = batch.last_index
        r = torch.arange(len(last), device=last.device)
        logits_all.append(logits[r, last].float().cpu())
        a_all.append(torch.stack([acts[s][r, last].float().cpu() for s in sites], 1))
    return torch.cat(logits_all), torch.cat(a_all)


def run_condition(
    model: Model,
    fmt: PromptFormat,
    demos: Sequence[Pair] | str,
    queries: Sequence[Pair],
    *,
    name: str = "",
    layers: Sequence[int] | None = None,
    alone: Tensor | None = None,
) -> ConditionResult:
    """Accuracy, answer probability and implicit-update size with context ``demos`` (pairs or raw text).

    ``alone`` may pass the (query, layer, d_model) MLP inputs of the queries asked alone, to reuse them.
    """
    layers = list(range(model.shape.n_layers)) if layers is None else list(layers)
    context = demos if isinstance(demos, str) else fmt.context(demos)
    bos = _bos(model)
    c = _ids(model, context) if context else []
    qs = [_ids(model, fmt.ask(p.input)) for p in queries]
    targets = torch.tensor([answer_token(model, fmt, p.output) for p in queries])
    logits, a_ctx = _logits_and_inputs(model, [bos + c + q for q in qs], layers)
    a_alone = alone if alone is not None else _logits_and_inputs(model, [bos + q for q in qs], layers)[1]
    norms = torch.zeros(len(qs))
    for j, layer in enumerate(layers):
        w = first_matrix(model, layer)
        norms += ((a_ctx[:, j] - a_alone[:, j]) @ w.T).norm(dim=1) / a_alone[:, j].norm(dim=1)
    probs = logits.softmax(-1)[torch.arange(len(qs)), targets]
    return ConditionResult(
        name, float((logits.argmax(-1) == targets).float().mean()), float(probs.mean()), float(norms.mean()), len(qs)
    )


def negative_context(fmt: PromptFormat, demos: Sequence[Pair], pool: Sequence[Pair], rng: random.Random) -> str:
    """Demonstrations that show what *not* to answer: each input with another pair's output, marked wrong."""
    parts = []
    for p in demos:
        wrong = rng.choice([q.output for q in pool if q.output != p.output])
        parts.append(fmt.demo(Pair(p.input, wrong)).replace("A:", "Wrong A:", 1) + fmt.sep)
    return "".join(parts)


def _embed_inputs(model: Model, pairs: Sequence[Pair]) -> Tensor:
    emb = model.hf.get_input_embeddings().weight.detach().float().cpu()
    vecs = [emb[_ids(model, " " + p.input)].mean(0) for p in pairs]
    v = torch.stack(vecs)
    return v / v.norm(dim=1, keepdim=True)


def similar_and_diverse(model: Model, pool: Sequence[Pair], k: int, rng: random.Random) -> tuple[list[Pair], list[Pair]]:
    """k nearest neighbours of a random anchor (token-embedding cosine) and k farthest-point picks from it."""
    v = _embed_inputs(model, pool)
    anchor = rng.randrange(len(pool))
    sim = v @ v[anchor]
    similar = [pool[i] for i in sim.argsort(descending=True)[:k].tolist()]
    chosen = [anchor]
    for _ in range(k - 1):
        closest = (v @ v[chosen].T).max(1).values
        closest[chosen] = float("inf")
        chosen.append(int(closest.argmin()))
    return similar, [pool[i] for i in chosen]


def takeaway_experiments(
    model: Model, task: Task, fmt: PromptFormat, *, k: int = 8, n_queries: int = 20, seed: int = 0,
    lengths: Sequence[int] = (0, 1, 2, 4, 8, 16),
) -> dict[str, list[dict]]:  # fmt: skip
    """Every takeaway condition on ``n_queries`` held-out queries; returns {experiment: [condition rows]}."""
    rng = random.Random(seed)
    queries = task.test[:n_queries]
    demos = rng.sample(task.train, k)
    out: dict[str, list[dict]] = {}

    layers = list(range(model.shape.n_layers))
    bos = _bos(model)
    alone = _logits_and_inputs(model, [bos + _ids(model, fmt.ask(p.input)) for p in queries], layers)[1]

    def row(name: str, ctx: Sequence[Pair] | str) -> dict:
        return asdict(run_condition(model, fmt, ctx, queries, name=name, layers=layers, alone=alone))

    out["positive_vs_negative"] = [
        row("none", ""), row("positive", demos), row("negative", negative_context(fmt, demos, task.train, rng)),
        row("negative+positive", negative_context(fmt, demos[: k // 2], task.train, rng) + fmt.context(demos[k // 2 :])),
    ]  # fmt: skip
    zs = predict(model, [fmt.ask(p.input) for p in demos])
    ease = zs.log_softmax(-1)[torch.arange(k), torch.tensor([answer_token(model, fmt, p.output) for p in demos])]
    by_ease = [demos[i] for i in ease.argsort(descending=True).tolist()]
    perms = [rng.sample(demos, k) for _ in range(3)]
    out["order"] = [row("easy_first", by_ease), row("hard_first", by_ease[::-1])] + [
        row(f"random_{i}", p) for i, p in enumerate(perms)
    ]
    similar, diverse = similar_and_diverse(model, task.train, k, rng)
    out["similar_vs_diverse"] = [row("similar", similar), row("diverse", diverse), row("random", demos)]
    pool = rng.sample(task.train, max(lengths))
    out["length"] = [row(f"k={n}", pool[:n]) for n in lengths]
    return out


@dataclass(frozen=True)
class TransferResult:
    """Whether an update absorbed for one query helps other queries of the same task."""

    acc_alone: float
    """Targets asked alone, no update."""
    acc_icl: float
    """Targets asked with the context (the goal)."""
    acc_transfer: float
    """Targets asked alone with another query's absorbed update (both rank-1 updates per layer)."""
    acc_transfer_first_only: float
    """Same with the paper's first-matrix updates only."""
    acc_control: float
    """Targets with an update absorbed from a different task's context (control)."""
    kl_alone: float
    """Mean KL(with context || alone) over targets."""
    kl_transfer: float
    kl_transfer_first_only: float
    kl_control: float
    self_kl_absorbed: float
    """Mean KL on the source queries themselves (should be ~0)."""
    n_sources: int
    n_targets: int


def transfer(
    model: Model, task: Task, fmt: PromptFormat, *, control: Task | None = None, k: int = 5, n_sources: int = 3,
    n_targets: int = 20, seed: int = 0,
) -> TransferResult:  # fmt: skip
    """Absorb one k-shot context for a source query, then ask the other held-out queries alone."""
    rng = random.Random(seed)
    demos = rng.sample(task.train, k)
    context = fmt.context(demos)
    tests = task.test[: n_sources + n_targets]
    sources, targets = tests[:n_sources], tests[n_sources:]
    tgt_ids = torch.tensor([answer_token(model, fmt, p.output) for p in targets])
    alone_p = [fmt.ask(p.input) for p in targets]
    ctx_logits = predict(model, [context + q for q in alone_p])
    alone = predict(model, alone_p)

    def score(logits: Tensor) -> tuple[float, float]:
        return float((logits.argmax(-1) == tgt_ids).float().mean()), float(kl_div(ctx_logits, logits).mean())

    rows: dict[str, list[tuple[float, float]]] = {"both": [], "first": [], "control": []}
    self_kl = []
    ctrl_context = fmt.context(rng.sample(control.train, k)) if control is not None else None
    for s in sources:
        for key, residual, ctx in (("both", True, context), ("first", False, context), ("control", True, ctrl_context)):
            if ctx is None:
                continue
            ab = absorb_context(model, ctx, fmt.ask(s.input), residual=residual)
            if key == "both":
                self_kl.append(ab.kl_absorbed)
            with applied(model, ab.updates):
                rows[key].append(score(predict(model, alone_p)))

    def mean(key: str, i: int) -> float:
        return float(sum(r[i] for r in rows[key]) / len(rows[key])) if rows[key] else float("nan")

    acc_alone, kl_alone = score(alone)
    return TransferResult(
        acc_alone=acc_alone, acc_icl=score(ctx_logits)[0], acc_transfer=mean("both", 0),
        acc_transfer_first_only=mean("first", 0), acc_control=mean("control", 0), kl_alone=kl_alone,
        kl_transfer=mean("both", 1), kl_transfer_first_only=mean("first", 1), kl_control=mean("control", 1),
        self_kl_absorbed=float(sum(self_kl) / len(self_kl)), n_sources=len(sources), n_targets=len(targets),
    )  # fmt: skip
