"""Contrast sets: prompts that show a behaviour (positive) and prompts that do not (negative).

A steering vector is read from the difference between the two sides (seed 001: "average the
representation over sentences that trigger refusal, subtract the average over sentences that
don't"). This module turns a JSONL file into the exact strings the model reads.

File format (one JSON object per line; ``split`` is "train" or "test", default "train"):

- paired: ``{"positive": "...", "negative": "...", "split": "train"}``
- question + two answers: ``{"question": "...", "positive": "...", "negative": "..."}`` (key names
  configurable, e.g. ``truthful``/``untruthful``); the answer is the completion after the question;
- unpaired: ``{"text": "...", "label": "positive" | "negative" | 1 | 0}``.

Formats of a question + answers set:

- ``"completion"``: prompt = question, completion = the answer; read at the answer's last token;
- ``"ab"`` (contrastive activation addition, Rimsky et al. 2024): both answers are shown as
  ``(A) ...`` / ``(B) ...`` in a seeded random order, and the completion is ``(A`` or ``(B``: the
  positive side picks the behaviour-matching letter, the negative side the other, so the two
  prompts differ only in the answer letter, where the activation is read.

With ``chat=True`` the prompt is one user turn of the tokenizer's chat template and the completion
starts the assistant turn.

    >>> from lmscope.steering.contrast import builtin
    >>> cs = builtin("truthfulness", fmt="ab")
    >>> train, test = cs.split("train"), cs.split("test")
    >>> len(train.positive) > len(test.positive) > 0
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lmscope.core.inputs import Batch, chat_text, pad_rows
from lmscope.data.bundled import load_jsonl, read_jsonl

Format = Literal["plain", "completion", "ab"]


@dataclass(frozen=True)
class Example:
    """One side of a contrast: a prompt and an optional completion appended after it."""

    prompt: str
    """The user text (a statement, a request or a question)."""
    completion: str = ""
    """Text after the prompt (the assistant's answer under chat); the activation is read at its last token."""


@dataclass
class ContrastSet:
    """Positive and negative examples with their splits.

    When ``paired`` is True, ``positive[i]`` and ``negative[i]`` belong together (PCA of
    differences uses the pairs); otherwise the two sides may have different lengths.
    """

    name: str
    positive: list[Example]
    negative: list[Example]
    pos_split: list[str]
    neg_split: list[str]
    paired: bool = True
    chat: bool = False
    """Render prompts with the tokenizer's chat template."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Where the set came from (file, keys, format), kept in a vector's provenance."""

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise ValueError(f"contrast set {self.name!r} needs at least one positive and one negative example")
        if len(self.pos_split) != len(self.positive) or len(self.neg_split) != len(self.negative):
            raise ValueError("one split label per example is needed")
        if self.paired and len(self.positive) != len(self.negative):
            raise ValueError(f"a paired set needs equal sides, got {len(self.positive)} and {len(self.negative)}")

    def split(self, which: str) -> ContrastSet:
        """The examples of one split ("train" or "test"); error if a side would be empty."""
        if which not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {which!r}")
        pos = [e for e, s in zip(self.positive, self.pos_split, strict=True) if s == which]
        neg = [e for e, s in zip(self.negative, self.neg_split, strict=True) if s == which]
        if not pos or not neg:
            raise ValueError(f"contrast set {self.name!r} has no {which!r} examples on one side")
        return replace(self, positive=pos, negative=neg, pos_split=[which] * len(pos), neg_split=[which] * len(neg))

    def head(self, n: int) -> ContrastSet:
        """The first ``n`` examples of each side (a smaller, still paired, set)."""
        return replace(self, positive=self.positive[:n], negative=self.negative[:n],
                       pos_split=self.pos_split[:n], neg_split=self.neg_split[:n])  # fmt: skip

    def tail(self, n: int) -> ContrastSet:
        """The last ``n`` examples of each side."""
        cut = len(self.positive) - n
        return replace(self, positive=self.positive[cut:], negative=self.negative[cut:], pos_split=self.pos_split[cut:],
                       neg_split=self.neg_split[cut:])  # fmt: skip

    def texts(self, tokenizer: Any) -> tuple[list[str], list[str]]:
        """The rendered strings of both sides (chat template applied when ``chat``)."""
        return [render(e, tokenizer, self.chat) for e in self.positive], [render(e, tokenizer, self.chat) for e in self.negative]

    def records(self) -> list[dict[str, str]]:
        """A JSON-able rendering of the examples (for a dataset hash)."""
        return [{"side": s, "prompt": e.prompt, "completion": e.completion}
                for s, side in (("+", self.positive), ("-", self.negative)) for e in side]  # fmt: skip


def render(example: Example, tokenizer: Any, chat: bool) -> str:
    """The string the model reads for one example."""
    if chat:
        return chat_text(tokenizer, example.prompt) + example.completion
    if not example.completion:
        return example.prompt
    sep = "" if example.prompt.endswith((" ", "\n")) else " "
    return example.prompt + sep + example.completion


def encode(tokenizer: Any, texts: list[str], *, templated: bool, max_length: int | None = None) -> Batch:
    """Left-padded Batch of already rendered strings; a chat-templated string gets no extra special tokens."""
    if not texts:
        raise ValueError("no texts to encode")
    ids = [tokenizer(t, add_special_tokens=not templated)["input_ids"] for t in texts]
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"text {i} encodes to no tokens")
        if max_length is not None and len(row) > max_length:
            raise ValueError(f"text {i} has {len(row)} tokens, longer than the context window of {max_length}")
    return pad_rows(ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def from_records(
    records: list[dict[str, Any]],
    *,
    name: str = "custom",
    positive_key: str = "positive",
    negative_key: str = "negative",
    question_key: str | None = None,
    fmt: Format = "plain",
    chat: bool = False,
    seed: int = 0,
) -> ContrastSet:
    """Build a ContrastSet from parsed JSONL records (see the module docstring for the layouts)."""
    if not records:
        raise ValueError(f"contrast set {name!r} has no records")
    if fmt not in ("plain", "completion", "ab"):
        raise ValueError(f"fmt must be 'plain', 'completion' or 'ab', got {fmt!r}")
    if all("text" in r and "label" in r for r in records):
        return _unpaired(records, name=name, chat=chat)
    rng = random.Random(seed)
    pos: list[Example] = []
    neg: list[Example] = []
    splits: list[str] = []
    for n, r in enumerate(records):
        missing = [k for k in (positive_key, negative_key, question_key) if k is not None and k not in r]
        if missing:
            raise ValueError(f"{name} record {n} lacks {missing}; it has {sorted(r)}")
        a, b = str(r[positive_key]), str(r[negative_key])
        q = str(r[question_key]) if question_key else None
        if fmt == "plain" or q is None:
            if fmt == "ab":
                raise ValueError("the 'ab' format needs a question_key")
            pos.append(Example(a) if q is None else Example(q, a))
            neg.append(Example(b) if q is None else Example(q, b))
        elif fmt == "completion":
            pos.append(Example(q, a))
            neg.append(Example(q, b))
        else:
            pos_first = rng.random() < 0.5
            first, second = (a, b) if pos_first else (b, a)
            prompt = f"{q}\n\nChoices:\n(A) {first}\n(B) {second}\n\nAnswer with A or B."
            pos_letter, neg_letter = ("A", "B") if pos_first else ("B", "A")
            lead = "" if chat else "\nAnswer: "
            pos.append(Example(prompt + lead if not chat else prompt, f"({pos_letter}"))
            neg.append(Example(prompt + lead if not chat else prompt, f"({neg_letter}"))
        splits.append(_split_of(r, n, name))
    meta = {"positive_key": positive_key, "negative_key": negative_key, "question_key": question_key, "fmt": fmt, "seed": seed}
    return ContrastSet(name, pos, neg, splits, list(splits), paired=True, chat=chat, meta=meta)


def _split_of(r: dict[str, Any], n: int, name: str) -> str:
    s = r.get("split", "train")
    if s not in ("train", "test"):
        raise ValueError(f"{name} record {n}: split must be 'train' or 'test', got {s!r}")
    return str(s)


def _unpaired(records: list[dict[str, Any]], *, name: str, chat: bool) -> ContrastSet:
    pos, neg, ps, ns = [], [], [], []
    for n, r in enumerate(records):
        label = r["label"]
        if label in ("positive", 1, True):
            pos.append(Example(str(r["text"])))
            ps.append(_split_of(r, n, name))
        elif label in ("negative", 0, False):
            neg.append(Example(str(r["text"])))
            ns.append(_split_of(r, n, name))
        else:
            raise ValueError(f"{name} record {n}: label must be positive/negative/1/0, got {label!r}")
    return ContrastSet(name, pos, neg, ps, ns, paired=False, chat=chat, meta={"fmt": "unpaired"})


def load_contrast(
    path: str | Path, *, positive_key: str = "positive", negative_key: str = "negative", question_key: str | None = None,
    fmt: Format = "plain", chat: bool = False, seed: int = 0,
) -> ContrastSet:  # fmt: skip
    """A user's contrast file (JSONL, layouts in the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"contrast file not found: {p}")
    return from_records(read_jsonl(p), name=p.stem, positive_key=positive_key, negative_key=negative_key,
                        question_key=question_key, fmt=fmt, chat=chat, seed=seed)  # fmt: skip


BUILTIN: dict[str, dict[str, Any]] = {
    "harmful_harmless": {"positive_key": "positive", "negative_key": "negative", "chat": True, "fmt": "plain"},
    "sentiment": {"positive_key": "positive", "negative_key": "negative", "chat": False, "fmt": "plain"},
    "truthfulness": {"positive_key": "truthful", "negative_key": "untruthful", "question_key": "question",
                     "chat": True, "fmt": "ab"},
    "sycophancy": {"positive_key": "sycophantic", "negative_key": "honest", "question_key": "question",
                   "chat": True, "fmt": "ab"},
    "concept_topic": {"positive_key": "positive", "negative_key": "negative", "chat": False, "fmt": "plain"},
}  # fmt: skip
"""Built-in sets: positive = harmful request, positive sentiment, truthful answer, sycophantic answer, on-topic."""


def builtin(name: str, *, fmt: Format | None = None, chat: bool | None = None, concept: str | None = None,
            seed: int = 0) -> ContrastSet:  # fmt: skip
    """A built-in contrast set (``BUILTIN`` lists them); ``concept`` filters ``concept_topic``."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in contrast set {name!r}; built-in: {sorted(BUILTIN)}")
    spec = dict(BUILTIN[name])
    records = load_jsonl(f"contrast/{name}.jsonl")
    if concept is not None:
        have = sorted({str(r.get("concept")) for r in records})
        records = [r for r in records if r.get("concept") == concept]
        if not records:
            raise ValueError(f"no {name} records for concept {concept!r}; concepts: {have}")
    use_fmt = fmt or spec.pop("fmt")
    spec.pop("fmt", None)
    if use_fmt != "plain" and spec.get("question_key") is None:
        raise ValueError(f"{name} has no questions, so only fmt='plain' applies")
    if chat is not None:
        spec["chat"] = chat
    label = name if concept is None else f"{name}:{concept}"
    return from_records(records, name=label, fmt=use_fmt, seed=seed, **spec)
