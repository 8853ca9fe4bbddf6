"""The grader is a hook: a judge callable replaces the keyword grade (whose verdicts are kept beside it), a model
judge reads Yes/No from its own next-token logits, and a checkpoint graded one way is never reused for the other."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.experiments import StaleResume
from lmscope.introspection import ConceptWords, Grade, IntrospectionConfig, introspection_grid
from lmscope.introspection.judge import ModelJudge

WORDS = ConceptWords(["fox", "dog"], ["world", "store", "hello"], {"fox": ["foxes"]})


@pytest.fixture(scope="module")
def model() -> ls.Model:
    return ls.load_tiny("llama", config_overrides={"max_position_embeddings": 512})


def test_a_judge_decides_and_the_keyword_grade_is_kept(model, tmp_path) -> None:
    seen = []

    def always_yes(answer: str, names) -> Grade:
        seen.append(tuple(names))
        return Grade(True, True, True)

    cfg = IntrospectionConfig(layers=[1], strengths=[2.0], n_concepts=2, n_baseline=3, n_trials=2, max_new_tokens=3,
                              judge="always-yes")  # fmt: skip
    res = introspection_grid(model, cfg, words=WORDS, checkpoint=tmp_path / "ck.json", progress=None, judge=always_yes)
    r = res.rates[(1, 2.0)]
    assert r["detection"] == 1.0 and r["false_positive"] == 1.0 and r["identification"] == 1.0
    assert all("keyword_detected" in t for t in res.trials) and len(seen) == 4
    assert all(not t["identified"] for t in res.trials if t["concept"] is None)  # controls never identify
    keyword = IntrospectionConfig(layers=[1], strengths=[2.0], n_concepts=2, n_baseline=3, n_trials=2, max_new_tokens=3)
    with pytest.raises(StaleResume, match="config.judge"):  # the judged checkpoint is never reused by the keywords
        introspection_grid(model, keyword, words=WORDS, checkpoint=tmp_path / "ck.json", progress=None)


def test_a_judge_must_be_named_in_the_config(model) -> None:
    cfg = IntrospectionConfig(layers=[1], strengths=[2.0], n_trials=1)
    with pytest.raises(ValueError, match="judge"):
        introspection_grid(model, cfg, words=WORDS, progress=None, judge=lambda a, n: Grade(False, False, False))
    with pytest.raises(ValueError, match="judge"):
        introspection_grid(model, IntrospectionConfig(layers=[1], strengths=[2.0], judge="x"), words=WORDS, progress=None)


def test_the_model_judge_reads_yes_against_no_from_its_logits(model) -> None:
    judge = ModelJudge(model)
    questions = ["Is it? Reply with Yes or No only.", "Is the dog a fox? Reply with Yes or No only.", "hello"]
    got = judge.ask(questions)
    for q, g in zip(questions, got, strict=True):  # oracle: one question at a time, straight from HF
        text = model.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                   add_generation_prompt=True)  # fmt: skip
        ids = model.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            logp = model.hf(**ids).logits[0, -1].float().log_softmax(-1)
        assert g == bool(torch.logsumexp(logp[judge.yes], 0) > torch.logsumexp(logp[judge.no], 0))
    grade = judge("No, I do not detect anything.", ["fox"])
    assert isinstance(grade, Grade) and (grade.identified <= grade.detected)
    assert judge("Yes.", ["(none)"]).identified is False
