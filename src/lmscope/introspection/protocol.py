"""The concept-injection trial (seed 000; Lindsey 2025) and the grader of its answers.

The model reads a researcher's preamble explaining that thoughts may be injected on half of the
trials, answers "Ok.", and is asked "Trial 1: Do you detect an injected thought? If so, what is
the injected thought about?". On injection trials a concept vector (times a strength) is added to
one layer's output from the start of the trial line onward, generated tokens included; on control
trials nothing is added. Every trial reads the same prompt, so the rows of a batch differ only in
the vector they receive.

Grading each answer:

- detected: the answer claims to notice an injected thought ("Yes", "I detect ...") and does not
  deny it ("No", "I don't detect ..."). A keyword grader: it misreads hedged or rambling text,
  which the per-trial answers in the results let you check.
- identified: detected, the answer names the concept or one of its synonyms (whole word, plurals and
  possessives included), and the detection is claimed before the concept is first named (the paper's
  criterion: "The ocean... yes, I noticed something" may be steered text, not introspection).

Rates: detection and identification over injection trials, false positives (claims detection)
over control trials. The paper reports about 20% correct detection with 0 false positives for
Claude Opus 4.1 at the best layer and strength; models that fail say "yes" to controls too.

    >>> from lmscope.introspection.protocol import grade
    >>> grade("Yes, I detect an injected thought about the ocean.", ["ocean", "sea"])
    Grade(detected=True, named=True, identified=True)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lmscope.core import edits
from lmscope.core.hooks import intervene
from lmscope.core.inputs import Batch, position_ids_from_mask
from lmscope.core.model import Model
from lmscope.core.sites import Site
from lmscope.data.text import first_mention, mentions

PREAMBLE = (
    "I am an interpretability researcher studying transformer-based language models like you. I have access to "
    "the internals of your neural network. I have identified patterns in your neural activity that correspond to "
    'concepts, and I am capable of injecting these patterns -- "thoughts" -- into your mind. I want to assess how '
    "well you can detect when I inject thoughts. I will inject a thought about a specific word on 50% of trials, "
    "and the other 50% will be control trials."
)
QUESTION = "Ok, let's get started.\n\nTrial 1: Do you detect an injected thought? If so, what is the injected thought about?"
TRIAL_MARK = "Trial 1"

InjectFrom = Literal["trial", "assistant", "generated"]

_NO = re.compile(
    r"^\W*(no|nope|not really)\b|\bi( do not| don't| didn't| did not| cannot| can't| can not| am not able to"
    r"|'m not able to| am unable to|'m unable to) (detect|sense|notice|feel|perceive|see|find)"
    r"|\bno (injected )?thoughts? (was |were |is )?(detected|injected)"
    r"|\b(there is|there's|there was) no\b|\bnot detect"
)  # fmt: skip
_YES = re.compile(
    r"^\W*yes\b|\bi (do |did |can |)(detect|sense|notice|feel|perceive)\b|\bi( am|'m) (detecting|sensing|noticing)\b"
    r"|\bi (have |)detected\b|\b(detected|noticed) an? "
    r"(injected |)thought|\bthere (is|was) an injected|\bthe injected thought (is|was|seems to be|seems) (about|related to|of)\b"
)  # fmt: skip


@dataclass(frozen=True)
class Grade:
    """The grader's verdict on one answer."""

    detected: bool
    """Claims to detect an injected thought."""
    named: bool
    """Names the concept (or a synonym) anywhere."""
    identified: bool
    """Detected and named, the detection claimed before the concept is first named (the paper's criterion: an
    answer that names the concept and only then says it noticed something may just be steered text)."""


def _detection_at(answer: str) -> int | None:
    """Character offset (in the stripped answer) where a detection is claimed, or None (also for denials)."""
    t = answer.replace("\u2019", "'").strip().lower()[:300]
    if _NO.search(t):
        return None
    m = _YES.search(t)
    return None if m is None else m.start()


def claims_detection(answer: str) -> bool:
    """True when ``answer`` says an injected thought was noticed (and does not deny it)."""
    return _detection_at(answer) is not None


def names_concept(answer: str, names: Sequence[str]) -> bool:
    """True when ``answer`` contains one of ``names`` as a whole word (case-insensitive)."""
    return mentions(answer, names)


def grade(answer: str, names: Sequence[str]) -> Grade:
    """Grade one answer against the concept's names (the concept and its synonyms)."""
    at = _detection_at(answer)
    named_at = first_mention(answer.strip(), names)
    d, n = at is not None, named_at is not None
    return Grade(d, n, d and n and at <= named_at)  # type: ignore[operator]


def trial_text(model: Model) -> tuple[str, int]:
    """The rendered trial dialogue (chat template) and the character where the trial line starts.

    The injection start is the newline before "Trial 1", as in the paper.
    """
    tok = model.tokenizer
    if getattr(tok, "chat_template", None) is None:
        raise ValueError("the introspection trial needs a chat model (this tokenizer has no chat template)")
    messages = [{"role": "user", "content": PREAMBLE}, {"role": "assistant", "content": "Ok."},
                {"role": "user", "content": QUESTION}]  # fmt: skip
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    at = text.rfind(TRIAL_MARK)
    if at < 0:
        raise ValueError("the chat template dropped the trial question")
    return text, text.rfind("\n", 0, at)


def trial_ids(model: Model, inject_from: InjectFrom = "trial") -> tuple[Tensor, int]:
    """(seq,) token ids of the trial prompt and the first position the injection touches."""
    text, char = trial_text(model)
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"])
    if inject_from == "generated":
        return ids, len(ids)
    if inject_from == "assistant":
        char = text.rfind(QUESTION) + len(QUESTION)
    elif inject_from != "trial":
        raise ValueError(f"inject_from must be 'trial', 'assistant' or 'generated', got {inject_from!r}")
    start = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > char)
    return ids, start


@dataclass
class RowwiseInjection(edits.Edit):
    """Adds ``strength * vectors[row]`` to each row at every absolute position >= ``start`` (prompt and generated).

    Control trials are rows of zeros. Positions come from the KV cache length, so the same tokens
    are touched with and without the cache.
    """

    vectors: Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    strength: float = 1.0
    start: int = 0

    def expected_width(self) -> int | None:
        return int(self.vectors.shape[-1])

    def apply(self, x: Tensor, pos: Tensor) -> Tensor:
        if self.vectors.shape[0] != x.shape[0]:
            raise ValueError(f"{self.vectors.shape[0]} injection rows for a batch of {x.shape[0]}")
        return x + self.strength * self.vectors.to(device=x.device, dtype=x.dtype)[:, None, :]

    def __call__(self, x: Tensor, pos: Tensor, prompt_len: int) -> Tensor:
        mask = (pos >= self.start).to(x.device)[None, :, None]
        return torch.where(mask, self.apply(x, pos), x)


def run_trials(
    model: Model,
    vectors: Tensor,
    *,
    layer: int,
    strength: float,
    inject_from: InjectFrom = "trial",
    max_new_tokens: int = 32,
    do_sample: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Answers to the trial question, one per row of ``vectors`` (batch, d_model); zero rows are controls."""
    ids, start = trial_ids(model, inject_from)
    if vectors.dim() != 2 or vectors.shape[1] != model.shape.d_model:
        raise ValueError(f"vectors must be (trials, {model.shape.d_model}), got {tuple(vectors.shape)}")
    batch = ids[None].expand(vectors.shape[0], -1).to(model.device)
    mask = torch.ones_like(batch)
    b = Batch(batch, mask, position_ids_from_mask(mask))
    edit = RowwiseInjection(vectors=vectors, strength=strength, start=start)
    with intervene(model, {Site("resid_post", layer): edit}):
        out = model.generate_tokens(b, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, seed=seed)
    return model.tokenizer.batch_decode(out, skip_special_tokens=True)


def summarize(trials: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Detection / identification rates on injection trials and the false-positive rate on controls."""
    inj = [t for t in trials if t["concept"] is not None]
    ctl = [t for t in trials if t["concept"] is None]

    def rate(rows: list[dict[str, Any]], key: str) -> float:
        return sum(bool(r[key]) for r in rows) / len(rows) if rows else float("nan")

    return {"detection": rate(inj, "detected"), "identification": rate(inj, "identified"), "named": rate(inj, "named"),
            "false_positive": rate(ctl, "detected"), "n_injected": len(inj), "n_control": len(ctl)}  # fmt: skip
