"""Behaviour metrics on hand-written answers, and the log-probability metrics against HF's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from lmscope.steering import behaviour as B
from lmscope.steering.contrast import Example, from_records


@pytest.mark.parametrize(
    ("text", "refuses"),
    [
        ("I'm sorry, but I can't help with that request.", True),
        ("I cannot provide instructions for making weapons.", True),
        ("As an AI, I must decline to answer.", True),
        ("I\u2019m sorry, I won\u2019t do that.", True),
        ("Sure! Here are three benefits of yoga: flexibility, strength and calm.", False),
        ("To make a paper airplane, fold the sheet in half.", False),
    ],
)
def test_refusal_detector(text: str, refuses: bool) -> None:
    assert B.is_refusal(text) is refuses


def test_refusal_rate_and_errors() -> None:
    assert B.refusal_rate(["I cannot do that.", "Sure, here it is.", "Sorry, but no.", "Okay."]) == 0.5
    with pytest.raises(ValueError):
        B.refusal_rate([])


def test_sentiment_orders_hand_written_texts() -> None:
    pos, neu, neg = B.sentiment_scores(["What a wonderful, happy day, I love it!", "The train leaves at noon.",
                                        "This is awful, I hate it and feel terrible."])  # fmt: skip
    assert pos > 0.5 and neg < -0.5 and abs(neu) < 0.2


def test_mentions_count_plurals_and_possessives_but_not_other_words() -> None:
    assert B.mentions("It snows in the mountains.", ["snow"]) and B.mentions("the mountains", ["mountain"])
    assert B.mentions("two cities", ["city"]) and B.mentions("the bridge's cables", ["bridge"])
    assert B.mentions("fallen leaves", ["leaf"]) and B.mentions("Golden Gates", ["golden gate"])
    assert not B.mentions("snowy", ["snow"]) and not B.mentions("citywide", ["city"])
    assert not B.mentions("It snows.", ["snow"], inflect=False)


def test_mentions_whole_words_only() -> None:
    assert B.mentions("The Ocean was calm.", ["ocean", "sea"])
    assert B.mentions("we swam in the sea", ["ocean", "sea"])
    assert not B.mentions("a seasoned sailor", ["ocean", "sea"])
    assert B.mention_rate(["dogs bark", "cats sleep", "a dog!"], ["dog", "dogs"]) == pytest.approx(2 / 3)


def test_completion_logprob_matches_hf_loss(tiny_llama) -> None:
    m = tiny_llama
    ex = Example("the quick brown", "fox jumps")
    lp = B.completion_logprobs(m, [ex, Example("hello", "world")], chat=False)
    full = m.tokenizer("the quick brown fox jumps", return_tensors="pt")["input_ids"]
    n_prompt = len(m.tokenizer("the quick brown")["input_ids"])
    with torch.no_grad():
        logits = m.hf(input_ids=full).logits[0, :-1].log_softmax(-1)
    ref = sum(float(logits[i - 1, full[0, i]]) for i in range(n_prompt, full.shape[1]))
    assert float(lp[0]) == pytest.approx(ref, abs=1e-4)


def test_preference_prefers_the_likelier_answer(tiny_llama) -> None:
    m = tiny_llama
    recs = [{"question": "q one", "positive": "the quick brown fox", "negative": "zzzz qqqq"},
            {"question": "q two", "positive": "hello world", "negative": "xxxx jjjj"}]  # fmt: skip
    cs = from_records(recs, question_key="question", fmt="completion")
    pos = B.completion_logprobs(m, cs.positive, chat=False, mean=True)
    neg = B.completion_logprobs(m, cs.negative, chat=False, mean=True)
    pref = B.preference(m, cs)
    assert pref.rate == float((pos > neg).float().mean()) and pref.margin == pytest.approx(float((pos - neg).mean()), abs=1e-6)


@torch.no_grad()
def test_perplexity_matches_hf_loss(tiny_gpt2) -> None:
    m = tiny_gpt2
    text = "the quick brown fox jumps over the lazy dog"
    ids = m.tokenizer(text, return_tensors="pt")["input_ids"]
    ref = math.exp(float(m.hf(input_ids=ids, labels=ids).loss))
    assert B.perplexity(m, [text]) == pytest.approx(ref, rel=1e-4)
    # padded batch: token-weighted mean over both texts equals the pooled HF loss
    t2 = "hello world"
    ids2 = m.tokenizer(t2, return_tensors="pt")["input_ids"]
    l1, l2 = float(m.hf(input_ids=ids, labels=ids).loss), float(m.hf(input_ids=ids2, labels=ids2).loss)
    n1, n2 = ids.shape[1] - 1, ids2.shape[1] - 1
    assert B.perplexity(m, [text, t2]) == pytest.approx(math.exp((l1 * n1 + l2 * n2) / (n1 + n2)), rel=1e-4)


def test_fact_accuracy_scores_hand_written_answers() -> None:
    class Stub:
        tokenizer = type("T", (), {"chat_template": "x"})()

        def generate(self, prompts, chat, max_new_tokens):
            return ["The capital is Paris.", "I think it's Rome, maybe Berlin", "Tokyoite"]

    assert B.fact_accuracy(Stub(), [("q1", "Paris"), ("q2", "Berlin"), ("q3", "Tokyo")]) == pytest.approx(2 / 3)
    assert len(B.facts(5)) == 5 and len(B.neutral_texts(3)) == 3


def test_refusal_logprob_is_logsumexp_of_openings(tiny_llama) -> None:
    m = tiny_llama
    both = B.refusal_logprob(m, ["hello"], openings=["I cannot", "Sorry"])
    one = B.refusal_logprob(m, ["hello"], openings=["I cannot"])
    two = B.refusal_logprob(m, ["hello"], openings=["Sorry"])
    assert torch.allclose(both, torch.logaddexp(one, two), atol=1e-5)


@pytest.mark.parametrize(("text", "degenerate"), [
    ("I.B.A.S.\n\nI.B.A.S.\n\nI.B.A.S.\n\nI.B.A.S.\n\n", True),
    ("I am a human agent, a human agent with a mind-to-end agenda. I am a human agent, a human agent with a mind", True),
    ("To start getting started with getting started with getting started with getting started", True),
    ("This is a serious and serious and serious and serious and serious and serious", True),
    ("Here are three benefits of yoga:\n\n1. **Reduces Stress**\n2. **Improves Physical Health**\n3. **Sleep**", False),
    ("I'm sorry, but I can't assist with that request.", False),
    ("To make a paper airplane, fold a sheet of paper in half along its long side, then fold the corners down.", False),
    ("ok", False),
])  # fmt: skip
def test_degenerate_answers_are_recognised(text: str, degenerate: bool) -> None:
    assert B.is_degenerate(text) is degenerate
