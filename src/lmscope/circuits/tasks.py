"""Circuit tasks: clean/corrupted prompt pairs with a metric, generated for this project.

A circuit experiment compares a *clean* run (the model does the task) with a *corrupted* run (the
information the task needs is removed) and asks which components carry the difference. Every task
here yields a :class:`TaskPairs`: equal-length clean and corrupted prompts (positions line up, so
activations can be patched position by position), the answer tokens counted as right and wrong
for each example, and a metric on the last position's logits.

- **IOI** (indirect object identification; Wang et al. 2022, "Interpretability in the Wild"):
  "When Mary and John went to the store, John gave a drink to" -> " Mary". ABBA and BABA orders of
  the first clause; names are single tokens with a leading space, checked with the tokenizer.
  Corruption "ABC": the second mention of the subject is replaced by a third name, so nothing says
  which of A/B is the indirect object. Metric: logit(IO) - logit(S).
- **Greater-than** (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> a
  year above 32. SmolLM2 tokenizes digits one by one, so the next token is the *tens digit* t; the
  metric is P(t > 3) - P(t < 3) (the equal digit is ambiguous and left out). Corruption: start
  year 17x1 with tens digit 0 ("1701"), as in the paper.
- **Capital recall**: "The capital of France is" -> " Paris"; corruption swaps in another country
  of the same token length. Metric: logit(capital) - logit(the other country's capital).

``filter_correct`` keeps the examples the model gets right and reports that fraction::

    import lmscope as ls
    from lmscope.circuits import ioi_task, filter_correct
    model = ls.load()
    task = ioi_task(model, n=40, seed=0)
    kept = filter_correct(model, task)
    kept.accuracy, kept.task.n                            # fraction right, examples kept
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lmscope.data.bundled import load_json, load_jsonl

if TYPE_CHECKING:
    from lmscope.core.inputs import Batch
    from lmscope.core.model import Model

MetricKind = Literal["logit_diff", "prob_diff"]


@dataclass
class TaskPairs:
    """Clean/corrupted prompt pairs of one task, all of the same token length."""

    name: str
    """Task name ("ioi", "greater_than", "capital")."""
    clean: list[str]
    """Prompts on which the model should do the task."""
    corrupt: list[str]
    """Same prompts with the task's information removed (same token count, position by position)."""
    correct: list[list[int]]
    """Per example, the token ids that count as right (one id for logit_diff)."""
    wrong: list[list[int]]
    """Per example, the token ids that count as wrong."""
    kind: MetricKind = "logit_diff"
    """logit_diff: logit(correct[0]) - logit(wrong[0]); prob_diff: P(correct set) - P(wrong set)."""

    def __post_init__(self) -> None:
        n = len(self.clean)
        if n == 0:
            raise ValueError(f"task {self.name!r} has no examples")
        if not (len(self.corrupt) == len(self.correct) == len(self.wrong) == n):
            raise ValueError(f"task {self.name!r}: clean, corrupt, correct and wrong must have the same length")

    @property
    def n(self) -> int:
        """Number of examples."""
        return len(self.clean)

    def subset(self, rows: Sequence[int]) -> TaskPairs:
        """The examples at ``rows``."""
        rows = list(rows)
        return replace(
            self, clean=[self.clean[i] for i in rows], corrupt=[self.corrupt[i] for i in rows],
            correct=[self.correct[i] for i in rows], wrong=[self.wrong[i] for i in rows],
        )  # fmt: skip

    def batches(self, model: Model) -> tuple[Batch, Batch]:
        """Tokenized (clean, corrupt) batches; raises if any prompt differs in token length."""
        clean, corrupt = model.tokenize(self.clean), model.tokenize(self.corrupt)
        lengths = set(clean.attention_mask.sum(-1).tolist()) | set(corrupt.attention_mask.sum(-1).tolist())
        if len(lengths) != 1:
            raise ValueError(
                f"task {self.name!r}: prompts must all have the same token length for position-wise patching, "
                f"got lengths {sorted(lengths)}"
            )
        return clean, corrupt

    def metric(self, logits: Tensor) -> Tensor:
        """(rows, seq, vocab) logits -> (rows,) metric at the last position.

        ``rows`` may be any multiple of ``n`` (stacked copies of the batch): row r is example r % n.
        """
        last = logits[:, -1].float()
        rows = last.shape[0]
        if rows % self.n:
            raise ValueError(f"{rows} rows is not a multiple of the task's {self.n} examples")
        reps = rows // self.n
        if self.kind == "logit_diff":
            good = torch.tensor([c[0] for c in self.correct], device=last.device).repeat(reps)
            bad = torch.tensor([w[0] for w in self.wrong], device=last.device).repeat(reps)
            r = torch.arange(rows, device=last.device)
            return last[r, good] - last[r, bad]
        probs = last.softmax(-1)
        return (probs * self._set_mask(self.correct, last).repeat(reps, 1)).sum(-1) - (
            probs * self._set_mask(self.wrong, last).repeat(reps, 1)
        ).sum(-1)

    def _set_mask(self, sets: list[list[int]], like: Tensor) -> Tensor:
        m = torch.zeros(self.n, like.shape[-1], device=like.device)
        for i, ids in enumerate(sets):
            m[i, ids] = 1.0
        return m

    def is_right(self, logits: Tensor) -> Tensor:
        """(n,) bool: does the model get each example right (clean logits (n, seq, vocab))."""
        if self.kind == "prob_diff":
            return self.metric(logits) > 0
        last = logits[:, -1]
        good = torch.tensor([c[0] for c in self.correct], device=last.device)
        bad = torch.tensor([w[0] for w in self.wrong], device=last.device)
        r = torch.arange(self.n, device=last.device)
        if self.name == "ioi":  # IO above S (the usual IOI accuracy)
            return last[r, good] > last[r, bad]
        return last.argmax(-1) == good


def single_token_names(model: Model, names: Sequence[str] | None = None) -> list[str]:
    """Names that are one token with a leading space (" Mary") in this model's tokenizer."""
    pool = list(names) if names is not None else list(load_json("names.json")["names"])
    keep = [nm for nm in pool if len(model.tokenizer(" " + nm, add_special_tokens=False)["input_ids"]) == 1]
    return list(dict.fromkeys(keep))


def _same_length(model: Model, task: TaskPairs) -> TaskPairs:
    """Keep the examples whose clean and corrupt prompts have the most common token length."""
    def n_tokens(text: str) -> int:
        return len(model.tokenizer(text)["input_ids"])

    lens = [(n_tokens(c), n_tokens(k)) for c, k in zip(task.clean, task.corrupt, strict=True)]
    ok = [a for a, b in lens if a == b]
    if not ok:
        raise ValueError(f"task {task.name!r}: no example whose clean and corrupt prompts have equal length")
    mode = Counter(ok).most_common(1)[0][0]
    return task.subset([i for i, (a, b) in enumerate(lens) if a == b == mode])


def ioi_task(
    model: Model,
    n: int = 40,
    *,
    seed: int = 0,
    templates: Sequence[int] | None = None,
    orders: Sequence[str] = ("ABBA", "BABA"),
    names: Sequence[str] | None = None,
) -> TaskPairs:
    """IOI pairs: ABBA/BABA templates, distinct single-token names, "ABC" corruption.

    ``templates`` indexes ``ioi_templates.json`` (default: all); only the templates of the most
    common token length are used, so every prompt has the same length. ``names`` replaces the
    built-in list (``names.json``); only single-token ones are used.
    """
    names = single_token_names(model, names)
    if len(names) < 3:
        raise ValueError(f"need at least 3 single-token names, the tokenizer gives {len(names)}")
    all_t = load_json("ioi_templates.json")["templates"]
    chosen = [all_t[i] for i in (templates if templates is not None else range(len(all_t)))]
    # positions must line up across the batch: keep the templates of the most common token length
    tlen = [len(model.tokenizer(t.format(A=names[0], B=names[1]))["input_ids"]) for t in chosen]
    mode = Counter(tlen).most_common(1)[0][0]
    chosen = [t for t, k in zip(chosen, tlen, strict=True) if k == mode]
    for o in orders:
        if o not in ("ABBA", "BABA"):
            raise ValueError(f"IOI order must be 'ABBA' or 'BABA', got {o!r}")
    rng = random.Random(seed)
    clean, corrupt, correct, wrong = [], [], [], []
    for i in range(n):
        t = chosen[i % len(chosen)]
        if orders[i // len(chosen) % len(orders)] == "BABA":
            t = t.replace("{A} and {B}", "{B} and {A}", 1)
        a, b, c = rng.sample(names, 3)
        head, tail = t.rsplit("{B}", 1)  # the last {B} is the second mention of the subject
        clean.append((head + "{B}" + tail).format(A=a, B=b))
        corrupt.append((head + c + tail).format(A=a, B=b))
        correct.append([model.token_id(" " + a)])
        wrong.append([model.token_id(" " + b)])
    return _same_length(model, TaskPairs("ioi", clean, corrupt, correct, wrong, "logit_diff"))


_EVENTS = ("war", "expedition", "reign", "siege", "drought", "famine", "journey", "project", "conflict", "voyage")


def greater_than_task(model: Model, n: int = 40, *, seed: int = 0, tens: Sequence[int] = range(2, 9)) -> TaskPairs:
    """Greater-than on years, metric P(tens digit > d) - P(tens digit < d) at "...to the year 17".

    Needs a tokenizer that splits numbers into single digits (SmolLM2, Llama 3 style); for others
    the years would need two-digit tokens and a different answer set, so it raises.
    """
    digits = [model.tokenizer(str(i), add_special_tokens=False)["input_ids"] for i in range(10)]
    if any(len(d) != 1 for d in digits) or len(model.tokenizer("1732", add_special_tokens=False)["input_ids"]) != 4:
        raise ValueError("greater_than_task needs a tokenizer that writes each digit as its own token")
    ids = [d[0] for d in digits]
    rng = random.Random(seed)
    clean, corrupt, correct, wrong = [], [], [], []
    for _ in range(n):
        century = rng.randint(11, 18)
        d, u = rng.choice(list(tens)), rng.randint(0, 9)
        ev = rng.choice(_EVENTS)
        text = "The {} lasted from the year {}{}{} to the year {}"
        clean.append(text.format(ev, century, d, u, century))
        corrupt.append(text.format(ev, century, 0, 1, century))
        correct.append([ids[t] for t in range(d + 1, 10)])
        wrong.append([ids[t] for t in range(0, d)])
    return _same_length(model, TaskPairs("greater_than", clean, corrupt, correct, wrong, "prob_diff"))


def capital_task(model: Model, n: int = 40, *, seed: int = 0, prompt: str = "The capital of {} is") -> TaskPairs:
    """Country -> capital recall; the corrupt prompt names another country of equal token length."""
    rows = load_jsonl("relations/country_capital.jsonl")
    first = {r["subject"]: model.tokenizer(" " + r["object"], add_special_tokens=False)["input_ids"][0] for r in rows}
    length = {r["subject"]: len(model.tokenizer(prompt.format(r["subject"]))["input_ids"]) for r in rows}
    rng = random.Random(seed)
    order = [r["subject"] for r in rows]
    rng.shuffle(order)
    clean, corrupt, correct, wrong = [], [], [], []
    for country in order[:n]:
        others = [c for c in order if c != country and length[c] == length[country] and first[c] != first[country]]
        if not others:
            continue
        other = rng.choice(others)
        clean.append(prompt.format(country))
        corrupt.append(prompt.format(other))
        correct.append([first[country]])
        wrong.append([first[other]])
    return _same_length(model, TaskPairs("capital", clean, corrupt, correct, wrong, "logit_diff"))


TASKS = {"ioi": ioi_task, "greater_than": greater_than_task, "capital": capital_task}


@dataclass
class Filtered:
    """A task restricted to the examples the model gets right."""

    task: TaskPairs
    """The kept examples."""
    accuracy: float
    """Fraction of the original examples the model got right."""
    n_total: int
    """Examples before filtering."""
    clean_metric: float
    """Mean metric on the kept clean prompts."""
    corrupt_metric: float
    """Mean metric on the kept corrupted prompts."""


@torch.no_grad()
def filter_correct(model: Model, task: TaskPairs, *, batch_size: int = 32, only_correct: bool = True) -> Filtered:
    """Keep only the examples the model gets right (all of them with ``only_correct=False``); report the fraction
    right and the metrics of the kept examples."""
    right, m_clean, m_corrupt = [], [], []
    for lo in range(0, task.n, batch_size):
        part = task.subset(range(lo, min(task.n, lo + batch_size)))
        clean, corrupt = part.batches(model)
        lc, lk = model(clean), model(corrupt)
        right.append(part.is_right(lc))
        m_clean.append(part.metric(lc))
        m_corrupt.append(part.metric(lk))
    ok = torch.cat(right)
    accuracy = float(ok.float().mean())
    if not only_correct:
        ok = torch.ones_like(ok)
    rows = ok.nonzero().flatten().tolist()
    if not rows:
        raise ValueError(f"the model gets none of the {task.n} {task.name!r} examples right")
    mc, mk = torch.cat(m_clean)[ok], torch.cat(m_corrupt)[ok]
    return Filtered(task.subset(rows), accuracy, task.n, float(mc.mean()), float(mk.mean()))


def pairs_task(model: Model, path: str) -> TaskPairs:
    """Your own clean/corrupt pairs: a JSONL file of ``{"clean", "corrupt", "answer", "wrong"}`` records.

    ``answer`` is the next token the clean prompt should get and ``wrong`` the one the corruption
    points to, each a single token (with its leading space, e.g. " Mary"); the metric is
    logit(answer) - logit(wrong). Pairs whose clean and corrupt prompts differ in token length
    are dropped; the most common length is kept, so positions line up.
    """
    from pathlib import Path

    from lmscope.data.bundled import read_jsonl

    if not Path(path).is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"pairs file {path} holds no records")
    correct, wrong = [], []
    for n, r in enumerate(rows, 1):
        missing = {"clean", "corrupt", "answer", "wrong"} - set(r)
        if missing:
            raise ValueError(f"{path}: record {n} lacks {sorted(missing)} (each needs clean, corrupt, answer, wrong)")
        ids = [model.tokenizer(r[k], add_special_tokens=False)["input_ids"] for k in ("answer", "wrong")]
        for key, got in zip(("answer", "wrong"), ids, strict=True):
            if len(got) != 1:
                raise ValueError(f"{path}: record {n}: {key} {r[key]!r} is {len(got)} tokens; it must be exactly one")
        correct.append(ids[0])
        wrong.append(ids[1])
    task = TaskPairs(Path(path).stem, [r["clean"] for r in rows], [r["corrupt"] for r in rows], correct, wrong, "logit_diff")
    return _same_length(model, task)
