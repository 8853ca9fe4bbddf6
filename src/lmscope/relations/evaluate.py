"""Faithfulness and causality of a linear relational embedding (see :mod:`.lre`).

- :func:`subject_states` runs prompts for many subjects in one batch and returns each subject's
  state at the LRE's layer, the model's own answer token and whether it matches the object.
- :func:`faithfulness`: on held-out subjects, does ``argmax unembed(beta W s + b)`` equal the
  model's answer? Reported over all test subjects and over those the model gets right.
- :func:`choose_beta`: the beta that maximises faithfulness on training subjects.
- :func:`causality`: edit the subject state by ``W^+ (o' - o) / beta`` (low-rank pseudo-inverse)
  and check the model now answers the target object; compared with the simple baseline of
  substituting the target subject's own state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.hooks import capture, intervene
from lmscope.core.inputs import Batch, pad_rows
from lmscope.core.sites import Site

from .lre import LRE, Prompting, Relation, _first_token, _prompt

if TYPE_CHECKING:
    from lmscope.core.model import Model


class TooFewSubjects(ValueError):
    """The model knows too few subjects of a relation for this test to be run (a null, not a failure)."""


@dataclass
class SubjectStates:
    """States and answers for a list of (subject, object) pairs."""

    pairs: list[tuple[str, str]]
    states: Tensor
    """(n, d_model) subject last-token state at the layer."""
    answer: Tensor
    """(n,) the model's argmax next token."""
    target: Tensor
    """(n,) first token of the true object."""
    batch: Batch
    subject_pos: Tensor
    """(n,) absolute subject position in the left-padded batch."""

    @property
    def correct(self) -> Tensor:
        return self.answer == self.target


def _batch(model: Model, rel: Relation, subjects: Sequence[str], p: Prompting) -> tuple[Batch, Tensor]:
    enc = [_prompt(model, rel, s, p) for s in subjects]
    width = max(len(ids) for ids, _ in enc)
    batch = pad_rows([t for t, _ in enc], model.tokenizer.pad_token_id or 0).to(model.device)
    pos = [width - len(t) + sp for t, sp in enc]
    return batch, torch.tensor(pos, device=model.device)


@torch.no_grad()
def subject_states(model: Model, rel: Relation, pairs: Sequence[tuple[str, str]], layer: int,
                   prompting: Prompting | None = None) -> SubjectStates:  # fmt: skip
    """Subject states at ``layer`` and the model's answers for ``pairs``."""
    p = prompting or Prompting()
    batch, spos = _batch(model, rel, [s for s, _ in pairs], p)
    site = Site("resid_post", layer)
    with capture(model, [site]) as acts:
        logits = model(batch)
    rows = torch.arange(len(pairs), device=model.device)
    states = acts[site][rows, spos]
    answer = logits[:, -1].argmax(-1)
    target = torch.tensor([_first_token(model, o) for _, o in pairs], device=model.device)
    return SubjectStates(list(pairs), states, answer, target, batch, spos)


@dataclass
class Faithfulness:
    """How often the LRE's decoded prediction equals the model's answer."""

    faithfulness: float
    """Over test subjects the model gets right (the paper's setting)."""
    faithfulness_all: float
    """Over all test subjects, against whatever the model answers."""
    model_accuracy: float
    """Fraction of test subjects the model itself gets right."""
    n: int


@torch.no_grad()
def faithfulness(model: Model, rel: Relation, lre: LRE, *, pairs: Sequence[tuple[str, str]] | None = None,
                 prompting: Prompting | None = None) -> Faithfulness:  # fmt: skip
    """Argmax of ``model.unembed(lre(s))`` vs the model's answer on held-out subjects."""
    st = subject_states(model, rel, pairs if pairs is not None else rel.test, lre.layer, prompting)
    pred = model.unembed(lre(st.states)).argmax(-1)
    same = pred == st.answer
    ok = st.correct
    return Faithfulness(
        float(same[ok].float().mean()) if bool(ok.any()) else float("nan"),
        float(same.float().mean()), float(ok.float().mean()), len(st.pairs),
    )  # fmt: skip


def choose_beta(model: Model, rel: Relation, lre: LRE, betas: Sequence[float] = (1, 1.5, 2, 2.5, 3, 4, 5, 6),
                prompting: Prompting | None = None) -> float:  # fmt: skip
    """Set ``lre.beta`` to the value with the best faithfulness on training subjects not used for W."""
    pairs = [t for t in rel.train if t[0] not in lre.subjects] or rel.train
    st = subject_states(model, rel, pairs, lre.layer, prompting)
    best, best_score = lre.beta, -1.0
    for beta in betas:
        lre.beta = float(beta)
        with torch.no_grad():
            score = float((model.unembed(lre(st.states)).argmax(-1) == st.answer).float().mean())
        if score > best_score:
            best, best_score = float(beta), score
    lre.beta = best
    return best


@dataclass
class Causality:
    """Success rates of making the model answer a chosen other object."""

    success: float
    """LRE inverse edit: fraction of (subject, target) pairs where the model answers the target."""
    baseline_substitute: float
    """Substituting the target subject's own state at the same layer."""
    n: int
    rank: int | None


@torch.no_grad()
def causality(model: Model, rel: Relation, lre: LRE, *, rank: int | None = 64, pairs: Sequence[tuple[str, str]] | None = None,
              prompting: Prompting | None = None, seed: int = 0) -> Causality:  # fmt: skip
    """Edit each known test subject toward another subject's object; count target answers."""
    st = subject_states(model, rel, pairs if pairs is not None else rel.test, lre.layer, prompting)
    known = st.correct.nonzero().flatten().tolist()
    gen = torch.Generator().manual_seed(seed)
    src, tgt = [], []
    for i in known:
        others = [j for j in known if int(st.target[j]) != int(st.target[i])]
        if others:
            src.append(i)
            tgt.append(others[int(torch.randint(len(others), (1,), generator=gen))])
    if not src:
        raise TooFewSubjects(f"relation {rel.name!r}: need two known test subjects with different objects to test editing")
    s = st.states[src]
    o_now, o_new = lre(s), lre(st.states[tgt])
    edited = s + lre.inverse_delta(o_new, o_now, rank)
    rows = Batch(st.batch.input_ids[src], st.batch.attention_mask[src], st.batch.position_ids[src])
    pos = st.subject_pos[src]
    want = st.target[tgt]
    rates = []
    for new in (edited, st.states[tgt]):

        def put(x: Tensor, new: Tensor = new) -> Tensor:
            x = x.clone()
            x[torch.arange(x.shape[0]), pos] = new.to(x.dtype)
            return x

        with intervene(model, {Site("resid_post", lre.layer): edits.custom(put)}):
            ans = model(rows)[:, -1].argmax(-1)
        rates.append(float((ans == want).float().mean()))
    return Causality(rates[0], rates[1], len(src), rank)
