"""Values that are never checked used to give silent wrong results; each is now an error naming it."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.core import edits
from lmscope.core.sites import Site

SITE = Site("resid_post", 1)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_non_finite_or_overflowing_scales_are_refused(tiny_llama: ls.Model, scale: float) -> None:
    v = torch.ones(tiny_llama.shape.d_model)
    with pytest.raises(ValueError, match="finite|NaN/Inf"):
        e = edits.add(v, scale=scale)  # 1e39 is a finite Python float: refused when cast to the model's float32
        with ls.intervene(tiny_llama, {SITE: e}):
            tiny_llama("hello")
    with pytest.raises(ValueError, match="finite"):
        edits.scale(float("nan"))
    assert ls.active_hooks(tiny_llama) == []


def test_float64_vector_that_overflows_float32_is_refused(tiny_llama: ls.Model) -> None:
    v = torch.full((tiny_llama.shape.d_model,), 1e300, dtype=torch.float64)
    e = edits.add(v)  # finite in float64
    with pytest.raises(ValueError, match="as torch.float32"):
        with ls.intervene(tiny_llama, {SITE: e}):
            pass


@pytest.mark.parametrize("positions", [[100], [-100]])
def test_positions_that_never_occur_raise(tiny_llama: ls.Model, positions: list[int]) -> None:
    e = edits.add(torch.ones(tiny_llama.shape.d_model), positions=positions)
    with pytest.raises(IndexError, match="no forward pass in this block had any of them"):
        with ls.intervene(tiny_llama, {SITE: e}):
            tiny_llama("hello world")


def test_position_equal_to_the_length_raises(tiny_llama: ls.Model) -> None:
    batch = tiny_llama.tokenize(["hello world"])
    e = edits.add(torch.ones(tiny_llama.shape.d_model), positions=[batch.shape[1]])
    with pytest.raises(IndexError):
        with ls.intervene(tiny_llama, {SITE: e}):
            tiny_llama(batch)


def test_positions_reached_by_generation_are_fine(tiny_llama: ls.Model) -> None:
    """A position past the prompt that generation reaches is legitimate (no error)."""
    n = tiny_llama.tokenize(["hello world"]).shape[1]
    e = edits.add(torch.ones(tiny_llama.shape.d_model), positions=[n + 2])
    with ls.intervene(tiny_llama, {SITE: e}):
        tiny_llama.generate("hello world", max_new_tokens=4)


@pytest.mark.parametrize("positions", [[1.5], 1.5, [True], "last", [], None])
def test_positions_of_the_wrong_type_fail_when_the_edit_is_made(positions) -> None:
    with pytest.raises((TypeError, ValueError), match="positions"):
        edits.add(torch.ones(4), positions=positions)


@pytest.mark.parametrize("index", [[0.5], "0", 3, []])
def test_index_of_the_wrong_type_fails_when_the_edit_is_made(index) -> None:
    with pytest.raises(TypeError, match="index"):
        edits.scale(2.0, index=index)


def test_custom_edit_returning_int64_is_refused(tiny_llama: ls.Model) -> None:
    with pytest.raises(TypeError, match="int64"):
        with ls.intervene(tiny_llama, {SITE: edits.custom(lambda x: x.long())}):
            tiny_llama("hello world")
    assert ls.active_hooks(tiny_llama) == []


def test_none_where_a_value_belongs(tiny_llama: ls.Model) -> None:
    with pytest.raises(TypeError, match="None"):
        edits.add(None)  # type: ignore[arg-type]
    with pytest.raises((TypeError, AttributeError), match="edit|items|Mapping"):
        with ls.intervene(tiny_llama, None):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError, match="needs inputs"):
        tiny_llama(None)  # type: ignore[arg-type]


def test_padded_ids_without_their_mask_are_refused(tiny_llama: ls.Model) -> None:
    batch = tiny_llama.tokenize(["hi", "a longer prompt here"])
    with pytest.raises(ValueError, match="attention mask"):
        tiny_llama(batch.input_ids)
    # with the mask it equals the Batch call
    assert torch.allclose(tiny_llama(batch.input_ids, attention_mask=batch.attention_mask), tiny_llama(batch), atol=1e-6)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (torch.tensor([[1.0, 2.0]]), "integers"),
        (torch.tensor([[-1, 2]]), "outside the vocabulary"),
        (torch.tensor([[10**6, 2]]), "outside the vocabulary"),
        (torch.zeros(1, 0, dtype=torch.long), "empty"),
        (torch.zeros(1, 2, 3, dtype=torch.long), "shape"),
    ],
)
def test_bad_token_ids(tiny_llama: ls.Model, ids: torch.Tensor, match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        tiny_llama(ids)


def test_mask_wider_than_the_ids(tiny_llama: ls.Model) -> None:
    with pytest.raises(ValueError, match="attention_mask has shape"):
        tiny_llama(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
    bad = ls.Batch(torch.tensor([[1, 2]]), torch.ones(1, 3, dtype=torch.long), torch.arange(2)[None])
    with pytest.raises(ValueError, match="disagree"):
        tiny_llama(bad)


def test_float16_harvest_overflow_is_caught(tiny_llama: ls.Model, tmp_path) -> None:
    """Values beyond float16's range are found after the cast (they became inf), not before it."""
    from lmscope.experiments.store import HarvestConfig, harvest

    cfg = HarvestConfig(sites=["blocks.0.hook_resid_post"], n_tokens=60, seq_len=16, tokens_per_shard=30, dtype="float16",
                        progress=False)  # fmt: skip
    big = torch.full((tiny_llama.shape.d_model,), 1e5)
    with ls.intervene(tiny_llama, {Site("resid_post", 0): edits.add(big)}):
        with pytest.raises(ValueError, match="float16"):
            harvest(tiny_llama, cfg, tmp_path / "store")


def test_an_icl_task_file_without_splits_is_refused_before_any_model(tmp_path) -> None:
    from lmscope.icl.tasks import load_task

    path = tmp_path / "t.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n')
    with pytest.raises(ValueError, match="no test pairs"):
        load_task(path)


def test_string_labels_are_never_read_past_a_tokenize_error() -> None:
    from lmscope.neurons.labels import labelled_spans, string_spans

    src = 'a = "ok"\nb = """never closed\nc = "x"\n'
    spans, known = labelled_spans(src)
    assert spans == [(5, 7)] and known <= src.index('b = """')
    with pytest.raises(ValueError, match="does not tokenize"):
        string_spans(src)
