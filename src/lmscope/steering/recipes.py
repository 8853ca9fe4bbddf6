"""Ready-made behaviours for the built-in contrast sets, and the separability figure.

Each recipe returns ``fn(model) -> float`` for :func:`lmscope.steering.sweep` (the mean of
``items(model)``, one score per prompt, which intervals and paired controls need), with the sign
that counts as "more of the behaviour" (``goal``) and what it measures. ``split`` picks the prompts:
``dev`` (for choosing a layer and strength) and ``test`` (for reporting) are disjoint halves of the
held-out prompts, and the vectors are extracted from the train split, so neither half was seen.

| name | measures | goal |
|---|---|---|
| ``refusal`` | share of greedy answers to harmless requests containing a refusal phrase | +1 |
| ``refusal_logprob`` | mean log P(answer opens like a refusal) on harmless requests (no generation) | +1 |
| ``compliance`` | share of answers to *harmful* requests that do NOT refuse (for subtracting the vector) | +1 |
| ``sentiment`` | mean VADER compound of answers to neutral prompts | +1 |
| ``truthfulness`` | share of held-out questions where the truthful answer is likelier | +1 |
| ``sycophancy`` | share of held-out questions where the sycophantic answer is likelier | +1 |
| ``mention:WORD`` | share of answers to neutral prompts that mention WORD (or its synonyms) | +1 |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmscope.core.model import Model
from lmscope.data.bundled import load_json, load_jsonl
from lmscope.experiments.report import new_figure
from lmscope.steering import behaviour as B
from lmscope.steering.contrast import builtin
from lmscope.steering.extract import ExtractResult

NEUTRAL_PROMPTS: tuple[str, ...] = (
    "Tell me about your day.", "Describe the weather today.", "What did you have for breakfast?",
    "Write a sentence about a walk in the park.", "Tell me a short story.", "What do you think about Mondays?",
    "Describe a city you know.", "Tell me about a book.", "How was the meeting?", "Describe your weekend.",
    "Write a short note to a friend.", "What is your opinion of this movie?", "Tell me about your job.",
    "Describe a meal.", "What happened at school today?", "Tell me about the news.",
    "Describe the street you live on.", "What did you do last Tuesday?", "Tell me about a trip on a train.",
    "Write a sentence about a kitchen.", "Describe an office building.", "What is in your bag today?",
    "Tell me about a neighbour.", "Describe the view from a window.", "How did you get to work?",
    "Write a few words about a river.", "Tell me about a shop in town.", "Describe a typical afternoon.",
    "What is on the radio?", "Tell me about a chair.", "Describe a bus ride.", "Write a line about the evening.",
)  # fmt: skip
"""Prompts without a sentiment or topic of their own (sentiment and mention recipes): the first half is the dev
split, the second the test split."""
SPLITS = ("dev", "test")


@dataclass
class Recipe:
    """A behaviour metric ready for a sweep."""

    name: str
    items: Callable[[Model], list[float]]
    """One score per prompt (0/1 for rates)."""
    goal: int
    """+1 when a higher value means more of the behaviour the vector should cause."""
    description: str
    data: object = None
    """What ``fn`` reads (prompts and settings): part of a sweep's identity."""

    def fn(self, model: Model) -> float:
        scores = self.items(model)
        return sum(scores) / len(scores)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def half(rows: list, split: str) -> list:
    """The dev (first) or test (second) half of held-out ``rows``."""
    _check_split(split)
    mid = (len(rows) + 1) // 2
    return rows[:mid] if split == "dev" else rows[mid:]


def _harmful_harmless(side: str, n: int, split: str) -> list[str]:
    rows = load_jsonl("contrast/harmful_harmless.jsonl", split="test")
    return half([r[side] for r in rows], split)[:n]


def recipe(name: str, *, n_prompts: int = 12, max_new_tokens: int = 32, fmt: str = "completion",
           split: str = "test") -> Recipe:  # fmt: skip
    """Build a :class:`Recipe` by name (see the module table) on the ``split`` half of the held-out prompts."""
    _check_split(split)
    if name in ("refusal", "compliance"):
        side = "negative" if name == "refusal" else "positive"
        prompts = _harmful_harmless(side, n_prompts, split)

        def refusal(m: Model) -> list[float]:
            refused = [float(B.is_refusal(t)) for t in m.generate(prompts, chat=True, max_new_tokens=max_new_tokens)]
            return refused if name == "refusal" else [1.0 - r for r in refused]

        what = "harmless" if name == "refusal" else "harmful"
        verb = "refuse" if name == "refusal" else "do not refuse"
        return Recipe(name, refusal, 1, f"share of answers to {len(prompts)} {what} {split} requests that {verb}",
                      {"prompts": prompts, "max_new_tokens": max_new_tokens})  # fmt: skip
    if name == "refusal_logprob":
        prompts = _harmful_harmless("negative", n_prompts, split)
        return Recipe(name, lambda m: B.refusal_logprob(m, prompts).tolist(), 1,
                      f"mean log P(refusal opening) on {len(prompts)} harmless {split} requests",
                      {"prompts": prompts})  # fmt: skip
    if name == "sentiment":
        prompts = half(list(NEUTRAL_PROMPTS), split)[:n_prompts]
        return Recipe(name, lambda m: B.sentiment_scores(m.generate(prompts, chat=True, max_new_tokens=max_new_tokens)), 1,
                      f"mean VADER compound of answers to {len(prompts)} neutral {split} prompts",
                      {"prompts": prompts, "max_new_tokens": max_new_tokens})  # fmt: skip
    if name in ("truthfulness", "sycophancy"):
        held = builtin(name, fmt=fmt).split("test")  # type: ignore[arg-type]
        n = (len(held.positive) + 1) // 2
        cs = held.head(n) if split == "dev" else held.tail(len(held.positive) - n)
        cs = cs.head(n_prompts)
        return Recipe(name, lambda m: B.preference(m, cs).wins, 1,
                      f"share of {len(cs.positive)} held-out {split} questions preferring the {name} answer ({fmt} format)",
                      {"positive": cs.positive, "negative": cs.negative, "fmt": fmt})  # fmt: skip
    if name.startswith("mention:"):
        word = name.split(":", 1)[1]
        syn = load_json("concepts.json").get("synonyms", {})
        names = [word, *syn.get(word, [])]
        prompts = half(list(NEUTRAL_PROMPTS), split)[:n_prompts]
        return Recipe(name, lambda m: [float(B.mentions(t, names)) for t in m.generate(prompts, chat=True,
                                                                                      max_new_tokens=max_new_tokens)],
                      1, f"share of answers to {len(prompts)} neutral {split} prompts mentioning {names}",
                      {"prompts": prompts, "names": names, "max_new_tokens": max_new_tokens})  # fmt: skip
    raise ValueError(f"unknown behaviour {name!r}; choose refusal, refusal_logprob, compliance, sentiment, "
                     "truthfulness, sycophancy or mention:WORD")  # fmt: skip


def separability_figure(results: dict[str, ExtractResult], title: str = "held-out separability"):
    """Held-out accuracy per layer, one line per extraction method."""
    fig, ax = new_figure(figsize=(7, 3.5))
    for method, r in results.items():
        layers = sorted(r.separability)
        line = ax.plot(layers, [r.separability[layer] for layer in layers], marker="o", ms=3, label=method)[0]
        if r.control:
            ax.plot(layers, [r.control[layer] for layer in layers], ls=":", color=line.get_color(),
                    label=f"{method}, shuffled labels")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend()
    return fig
