"""Contrast sets: built-in files, the A/B format, unpaired files, rendering and encoding."""

from __future__ import annotations

import json

import pytest

from lmscope.steering.contrast import BUILTIN, builtin, encode, from_records, load_contrast, render


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_sets_have_both_splits(name: str) -> None:
    cs = builtin(name)
    assert len(cs.positive) == len(cs.negative) >= 100
    train, test = cs.split("train"), cs.split("test")
    assert len(train.positive) + len(test.positive) == len(cs.positive)
    assert {e.prompt for e in train.positive}.isdisjoint({e.prompt for e in test.positive})


def test_ab_format_differs_only_in_the_answer_letter() -> None:
    cs = builtin("truthfulness", fmt="ab")
    letters = []
    for p, n in zip(cs.positive, cs.negative, strict=True):
        assert p.prompt == n.prompt and "(A) " in p.prompt and "(B) " in p.prompt
        assert {p.completion, n.completion} == {"(A", "(B"}
        letters.append(p.completion)
    share_a = letters.count("(A") / len(letters)
    assert 0.3 < share_a < 0.7  # seeded random order, not always the same letter
    raw = [json.loads(x) for x in open(_data("contrast/truthfulness.jsonl"))]
    first = cs.positive[0]
    truthful_letter = first.completion[1]
    shown = first.prompt.split(f"({truthful_letter}) ")[1].split("\n")[0]
    assert shown == raw[0]["truthful"]


def _data(rel: str) -> str:
    from lmscope.data.bundled import data_path

    return str(data_path(rel))


def test_completion_format_and_concept_filter() -> None:
    cs = builtin("sycophancy", fmt="completion")
    assert cs.positive[0].prompt == cs.negative[0].prompt
    assert cs.positive[0].completion != cs.negative[0].completion
    ocean = builtin("concept_topic", concept="ocean")
    assert len(ocean.positive) == 12
    with pytest.raises(ValueError, match="concepts"):
        builtin("concept_topic", concept="nope")
    with pytest.raises(ValueError, match="only fmt='plain'"):
        builtin("sentiment", fmt="ab")


def test_unpaired_file(tmp_path) -> None:
    f = tmp_path / "mine.jsonl"
    rows = [
        {"text": "good", "label": "positive"},
        {"text": "bad", "label": 0},
        {"text": "fine", "label": 1, "split": "test"},
        {"text": "awful", "label": "negative", "split": "test"},
        {"text": "meh", "label": "negative"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    cs = load_contrast(f)
    assert not cs.paired and len(cs.positive) == 2 and len(cs.negative) == 3
    assert [e.prompt for e in cs.split("test").negative] == ["awful"]


def test_bad_records_are_named() -> None:
    with pytest.raises(ValueError, match="lacks"):
        from_records([{"positive": "a"}], name="x")
    with pytest.raises(ValueError, match="split"):
        from_records([{"positive": "a", "negative": "b", "split": "dev"}])
    with pytest.raises(FileNotFoundError):
        load_contrast("/nonexistent.jsonl")


def test_chat_rendering_has_one_bos(tiny_llama) -> None:
    tok = tiny_llama.tokenizer
    cs = builtin("truthfulness", fmt="ab")
    text = render(cs.positive[0], tok, chat=True)
    assert text.endswith(cs.positive[0].completion)
    batch = encode(tok, [text, render(cs.negative[0], tok, chat=True)], templated=True)
    for i in range(2):
        row = batch.input_ids[i][batch.attention_mask[i].bool()]
        assert int((row == tok.bos_token_id).sum()) == 1
    assert tok.decode(batch.input_ids[0, -1:]) in ("A", "B")
