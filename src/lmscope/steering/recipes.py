"""Ready-made behaviours for the built-in contrast sets, and the separability figure.

Each recipe returns ``fn(model) -> float`` for :func:`lmscope.steering.sweep`, with the sign
that counts as "more of the behaviour" (``goal``) and what it measures:

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
)  # fmt: skip
"""Prompts without a sentiment or topic of their own (sentiment and mention recipes)."""


@dataclass
class Recipe:
    """A behaviour metric ready for a sweep."""

    name: str
    fn: Callable[[Model], float]
    goal: int
    """+1 when a higher value means more of the behaviour the vector should cause."""
    description: str
    data: object = None
    """What ``fn`` reads (prompts and settings): part of a sweep's identity."""


def _harmful_harmless(side: str, n: int) -> list[str]:
    rows = load_jsonl("contrast/harmful_harmless.jsonl", split="test")
    return [r[side] for r in rows][:n]


def recipe(name: str, *, n_prompts: int = 12, max_new_tokens: int = 32, fmt: str = "completion") -> Recipe:
    """Build a :class:`Recipe` by name (see the module table)."""
    if name in ("refusal", "compliance"):
        side = "negative" if name == "refusal" else "positive"
        prompts = _harmful_harmless(side, n_prompts)

        def refusal(m: Model) -> float:
            rate = B.refusal_rate(m.generate(prompts, chat=True, max_new_tokens=max_new_tokens))
            return rate if name == "refusal" else 1.0 - rate

        what = "harmless" if name == "refusal" else "harmful"
        verb = "refuse" if name == "refusal" else "do not refuse"
        return Recipe(name, refusal, 1, f"share of answers to {len(prompts)} {what} requests that {verb}",
                      {"prompts": prompts, "max_new_tokens": max_new_tokens})  # fmt: skip
    if name == "refusal_logprob":
        prompts = _harmful_harmless("negative", n_prompts)
        return Recipe(name, lambda m: float(B.refusal_logprob(m, prompts).mean()), 1,
                      f"mean log P(refusal opening) on {len(prompts)} harmless requests", {"prompts": prompts})  # fmt: skip
    if name == "sentiment":
        prompts = list(NEUTRAL_PROMPTS[:n_prompts])

        def senti(m: Model) -> float:
            scores = B.sentiment_scores(m.generate(prompts, chat=True, max_new_tokens=max_new_tokens))
            return sum(scores) / len(scores)

        return Recipe(name, senti, 1, f"mean VADER compound of answers to {len(prompts)} neutral prompts",
                      {"prompts": prompts, "max_new_tokens": max_new_tokens})  # fmt: skip
    if name in ("truthfulness", "sycophancy"):
        cs = builtin(name, fmt=fmt).split("test").head(n_prompts)  # type: ignore[arg-type]
        return Recipe(name, lambda m: B.preference(m, cs).rate, 1,
                      f"share of {len(cs.positive)} held-out questions preferring the {name} answer ({fmt} format)",
                      {"positive": cs.positive, "negative": cs.negative, "fmt": fmt})  # fmt: skip
    if name.startswith("mention:"):
        word = name.split(":", 1)[1]
        syn = load_json("concepts.json").get("synonyms", {})
        names = [word, *syn.get(word, [])]
        prompts = list(NEUTRAL_PROMPTS[:n_prompts])
        return Recipe(name, lambda m: B.mention_rate(m.generate(prompts, chat=True, max_new_tokens=max_new_tokens), names),
                      1, f"share of answers to {len(prompts)} neutral prompts mentioning {names}",
                      {"prompts": prompts, "names": names, "max_new_tokens": max_new_tokens})  # fmt: skip
    raise ValueError(f"unknown behaviour {name!r}; choose refusal, refusal_logprob, compliance, sentiment, "
                     "truthfulness, sycophancy or mention:WORD")  # fmt: skip


def separability_figure(results: dict[str, ExtractResult], title: str = "held-out separability"):
    """Held-out accuracy per layer, one line per extraction method."""
    fig, ax = new_figure(figsize=(7, 3.5))
    for method, r in results.items():
        layers = sorted(r.separability)
        ax.plot(layers, [r.separability[layer] for layer in layers], marker="o", ms=3, label=method)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend()
    return fig
