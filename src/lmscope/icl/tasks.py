"""In-context tasks: (input, output) pairs, prompt formats, few-shot prompts, first-token scoring.

A task is a list of :class:`Pair` with a ``split`` ("train" pairs feed demonstrations and
vectors, "test" pairs are the held-out queries). The built-in tasks live in
``lmscope/data/files/tasks/<name>.jsonl`` (``{"input", "output", "split"}`` per line); any JSONL
file with the same fields works too (:func:`load_task` takes a path).

A :class:`PromptFormat` turns pairs into text. ``qa`` writes ``"Q: hot\\nA: cold"`` blocks
separated by a blank line and asks with ``"Q: big\\nA:"``; ``arrow`` is Hendel et al.'s
``"hot -> cold"``; ``colon`` is the lecture's bare ``"hot:cold, big:"``. Scoring is first-token
accuracy (as in Hendel et al. 2023 and Todd et al. 2024): the greedy next token after the query
must equal the first token of the answer (``" cold"`` with the leading space where the format has one).

    >>> from lmscope.icl.tasks import load_task, FORMATS
    >>> task = load_task("antonyms")
    >>> FORMATS["qa"].prompt(task.train[:2], task.test[0].input)  # doctest: +ELLIPSIS
    'Q: ...\\nA: ...\\n\\nQ: ...\\nA: ...\\n\\nQ: ...\\nA:'
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lmscope.core.metrics import at_last
from lmscope.core.model import Model
from lmscope.data.bundled import DATA_DIR, read_jsonl

BUILTIN_TASKS: tuple[str, ...] = (
    "antonyms", "country_capital", "english_french", "singular_plural", "present_past", "lower_upper",
    "country_language", "animal_young", "number_next", "city_country", "word_first_letter", "synonyms",
)  # fmt: skip


@dataclass(frozen=True)
class Pair:
    """One example of a task."""

    input: str
    output: str
    split: str = "train"


@dataclass(frozen=True)
class Task:
    """A named list of pairs with disjoint train/test splits."""

    name: str
    pairs: tuple[Pair, ...]

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError(f"task {self.name!r} has no pairs")
        overlap = {p.input for p in self.train} & {p.input for p in self.test}
        if overlap:
            raise ValueError(f"task {self.name!r}: inputs in both train and test: {sorted(overlap)[:5]}")

    @property
    def train(self) -> list[Pair]:
        return [p for p in self.pairs if p.split == "train"]

    @property
    def test(self) -> list[Pair]:
        return [p for p in self.pairs if p.split == "test"]

    @property
    def dev(self) -> list[Pair]:
        return [p for p in self.pairs if p.split == "dev"]

    def with_dev(self, n: int, *, seed: int = 0) -> Task:
        """This task with ``n`` train pairs (a seeded draw) moved to a ``dev`` split, for choosing settings."""
        train = self.train
        if not 0 < n < len(train):
            raise ValueError(f"task {self.name!r}: a dev split of {n} needs more than {n} train pairs (has {len(train)})")
        moved = {p.input for p in random.Random(seed).sample(train, n)}
        pairs = tuple(Pair(p.input, p.output, "dev") if p.split == "train" and p.input in moved else p for p in self.pairs)
        return Task(self.name, pairs)


def load_task(name_or_path: str | Path) -> Task:
    """A built-in task by name (see :data:`BUILTIN_TASKS`) or a JSONL file of {input, output, split}."""
    path = Path(name_or_path)
    if not path.suffix:
        path = DATA_DIR / "tasks" / f"{name_or_path}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"no built-in task {str(name_or_path)!r}; built-in tasks: {list(BUILTIN_TASKS)}")
    records = read_jsonl(path)
    pairs = []
    for n, r in enumerate(records, 1):
        if "input" not in r or "output" not in r:
            raise ValueError(f"{path}:{n}: a task record needs 'input' and 'output', got keys {sorted(r)}")
        split = str(r.get("split", "train"))
        if split not in ("train", "test"):
            raise ValueError(f"{path}:{n}: split must be 'train' or 'test', got {split!r}")
        pairs.append(Pair(str(r["input"]), str(r["output"]), split))
    splits = {p.split for p in pairs}
    if splits != {"train", "test"}:
        missing = sorted({"train", "test"} - splits)
        raise ValueError(f"{path}: the task has no {' and no '.join(missing)} pairs; give each record a \"split\" of "
                         "'train' (demonstrations) or 'test' (queries), with at least one of each")  # fmt: skip
    return Task(path.stem, tuple(pairs))


@dataclass(frozen=True)
class PromptFormat:
    """How pairs become text: ``example`` with {x} and {y}, joined by ``sep``; the query is ``query``."""

    name: str
    example: str
    query: str
    sep: str
    answer_prefix: str
    """Text between the query and the answer's first character (e.g. a space)."""

    def demo(self, pair: Pair) -> str:
        return self.example.format(x=pair.input, y=pair.output)

    def ask(self, x: str) -> str:
        return self.query.format(x=x)

    def prompt(self, demos: Sequence[Pair], x: str) -> str:
        """Few-shot prompt: the demonstrations, then the query (zero-shot when ``demos`` is empty)."""
        return self.sep.join([*(self.demo(p) for p in demos), self.ask(x)])

    def context(self, demos: Sequence[Pair]) -> str:
        """The demonstrations with the separator that precedes a query."""
        return "".join(self.demo(p) + self.sep for p in demos)


FORMATS: dict[str, PromptFormat] = {
    "qa": PromptFormat("qa", "Q: {x}\nA: {y}", "Q: {x}\nA:", "\n\n", " "),
    "arrow": PromptFormat("arrow", "{x} -> {y}", "{x} ->", "\n", " "),
    "colon": PromptFormat("colon", "{x}:{y}", "{x}:", ", ", ""),
}
"""Built-in prompt formats by name."""


def answer_token(model: Model, fmt: PromptFormat, answer: str) -> int:
    """Id of the first token of ``answer`` as it follows a query in ``fmt``."""
    ids = model.tokenizer(fmt.answer_prefix + answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} tokenizes to nothing")
    return int(ids[0])


def sample_demos(pool: Sequence[Pair], k: int, *, exclude: str | None = None, rng: random.Random) -> list[Pair]:
    """``k`` demonstrations drawn without replacement from ``pool``, never the query itself."""
    candidates = [p for p in pool if p.input != exclude]
    if k > len(candidates):
        raise ValueError(f"asked for {k} demonstrations but the pool has {len(candidates)}")
    return rng.sample(candidates, k)


def predict(model: Model, prompts: Sequence[str], *, batch_size: int = 16) -> Tensor:
    """(n, vocab) last-token logits for plain-text prompts, in batches."""
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = model.tokenize(list(prompts[i : i + batch_size]))
        logits = model(batch)
        assert logits is not None
        out.append(at_last(logits, batch.attention_mask).float().cpu())
    return torch.cat(out)


def first_token_accuracy(logits: Tensor, targets: Sequence[int]) -> float:
    """Fraction of rows whose argmax is the target token."""
    return float((logits.argmax(-1) == torch.as_tensor(list(targets))).float().mean())


@dataclass(frozen=True)
class Queries:
    """Held-out queries of a task with their prompts and target tokens."""

    pairs: list[Pair]
    zero_shot: list[str]
    few_shot: list[str]
    targets: list[int]


def make_queries(model: Model, task: Task, fmt: PromptFormat, *, k: int = 5, n: int = 30, seed: int = 0,
                 split: str = "test") -> Queries:  # fmt: skip
    """Up to ``n`` pairs of ``split`` (test or dev), each as a zero-shot prompt and a ``k``-shot prompt built from
    train pairs."""
    if split not in ("test", "dev"):
        raise ValueError(f"split must be 'test' or 'dev', got {split!r}")
    rng = random.Random(seed)
    pairs = (task.test if split == "test" else task.dev)[:n]
    few = [fmt.prompt(sample_demos(task.train, k, exclude=p.input, rng=rng), p.input) for p in pairs]
    return Queries(pairs, [fmt.ask(p.input) for p in pairs], few, [answer_token(model, fmt, p.output) for p in pairs])
