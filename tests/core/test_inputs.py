"""RELIABILITY.md C13, C14, C16 and the input rows of the bad-input table.

Oracles: each prompt run alone (no padding), the token lists themselves for the last index, and
the chat template's text for the BOS count.
"""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.core.inputs import last_token_index, position_ids_from_mask, tokenize
from lmscope.core.sites import Site
from lmscope.core.tiny import tiny_tokenizer

from ._util import PROMPTS

TOL = 1e-5


# ---- C13 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_c13_padded_batch_equals_single_examples(tiny: ls.Model, side: str) -> None:
    sites = tiny.sites(["resid_post", "attn_z"])
    batch = tiny.tokenize(PROMPTS, padding_side=side)
    assert len({int(n) for n in batch.attention_mask.sum(-1)}) == len(PROMPTS), "prompts must differ in length"
    with ls.capture(tiny, sites) as acts:
        logits = tiny(batch)
    last = batch.last_index
    for i, prompt in enumerate(PROMPTS):
        single = tiny.tokenize(prompt)
        with ls.capture(tiny, sites) as ref:
            ref_logits = tiny(single)
        real = batch.attention_mask[i].bool()
        assert torch.equal(batch.input_ids[i, real], single.input_ids[0])
        assert (logits[i, last[i]] - ref_logits[0, -1]).abs().max() <= TOL
        assert (logits[i, real] - ref_logits[0]).abs().max() <= TOL
        for site in sites:
            assert (acts[site][i, real] - ref[site][0]).abs().max() <= TOL, f"{site} row {i} ({side} padding)"


def test_c13_position_ids_follow_the_mask() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pos = position_ids_from_mask(mask)
    assert pos[0, 2:].tolist() == [0, 1, 2] and pos[1, :3].tolist() == [0, 1, 2] and pos[2].tolist() == [0, 1, 2, 3, 4]


def test_c13_gpt2_without_position_ids_would_differ(tiny_gpt2: ls.Model) -> None:
    """The test above has teeth: GPT-2 given a left-padded batch without position ids is wrong."""
    batch = tiny_gpt2.tokenize(PROMPTS)
    with torch.no_grad():
        naive = tiny_gpt2.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    single = tiny_gpt2(PROMPTS[0])
    assert (naive[0, -1] - single[0, -1]).abs().max() > 1e-3
    assert (tiny_gpt2(batch)[0, -1] - single[0, -1]).abs().max() <= TOL


# ---- C14 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad", ["pad", "eos", "zero"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_c14_last_token_index(pad: str, side: str) -> None:
    tok = tiny_tokenizer(pad=pad)
    if pad == "eos":
        assert tok.pad_token_id == tok.eos_token_id
    if pad == "zero":
        assert tok.pad_token_id == 0
    prompts = ["hello world", "the quick brown fox jumps over", "hi<eos>", "<pad>a"]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    batch = tokenize(tok, prompts, padding_side=side)
    width = max(len(x) for x in ids)
    want = [width - 1 if side == "left" else len(x) - 1 for x in ids]
    assert batch.last_index.tolist() == want
    for i, x in enumerate(ids):
        assert int(batch.input_ids[i, want[i]]) == x[-1]
    # A prompt ending in the pad token (pad == eos) keeps its real last token.
    assert ids[2][-1] == tok.eos_token_id


def test_c14_no_padding_and_single_prompt() -> None:
    tok = tiny_tokenizer()
    batch = tokenize(tok, ["the quick brown fox", "the quick brown fox"])
    n = len(tok("the quick brown fox")["input_ids"])
    assert batch.attention_mask.all() and batch.shape == (2, n)
    assert batch.last_index.tolist() == [n - 1, n - 1]
    single = tokenize(tok, "hello")
    assert single.last_index.tolist() == [single.shape[1] - 1]


@pytest.mark.parametrize("pad", ["eos", "zero"])
def test_c14_last_token_logits_with_special_pad_ids(pad: str) -> None:
    model = ls.load_tiny("llama", pad=pad)
    prompts = ["hello world", "the quick brown fox jumps over"]
    for side in ("left", "right"):
        batch = model.tokenize(prompts, padding_side=side)
        logits = model(batch)
        for i, p in enumerate(prompts):
            assert (logits[i, batch.last_index[i]] - model(p)[0, -1]).abs().max() <= TOL


def test_c14_last_token_without_mask_is_an_error() -> None:
    with pytest.raises(ValueError, match="mask"):
        last_token_index(None)
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))


# ---- C16 ------------------------------------------------------------------------------------------
def _with_bos_postprocessor(tok):
    from tokenizers import processors

    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


@pytest.mark.parametrize("adds_bos", [False, True], ids=["plain", "tokenizer-adds-bos"])
def test_c16_chat_prompts_carry_exactly_one_bos(adds_bos: bool) -> None:
    tok = tiny_tokenizer()
    if adds_bos:
        tok = _with_bos_postprocessor(tok)
        assert tok("hi")["input_ids"][0] == tok.bos_token_id  # the hazard is real: plain text gets a BOS
    batch = tokenize(tok, ["hello world", "the quick brown fox"], chat=True, system="be brief")
    bos = tok.bos_token_id
    for i in range(2):
        real = batch.input_ids[i, batch.attention_mask[i].bool()]
        assert int((real == bos).sum()) == 1
        assert int(real[0]) == bos
    plain = tokenize(tok, ["hello world"], chat=False)
    assert int((plain.input_ids == bos).sum()) == (1 if adds_bos else 0)


# ---- bad input ------------------------------------------------------------------------------------
def test_empty_and_too_long_prompts(tiny_llama: ls.Model) -> None:
    with pytest.raises(ValueError, match="empty prompt list"):
        tiny_llama.tokenize([])
    with pytest.raises(ValueError, match="prompt 1 is an empty string"):
        tiny_llama.tokenize(["fine", ""])
    with pytest.raises(ValueError, match="empty"):
        tiny_llama("")
    n = tiny_llama.shape.max_positions
    with pytest.raises(ValueError, match=f"context window of {n}"):
        tiny_llama.tokenize(["hello world " * n])
    with pytest.raises(ValueError, match=f"context window of {n}"):
        tiny_llama(torch.ones(1, n + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="padding_side"):
        tiny_llama.tokenize(["a"], padding_side="middle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a str"):
        tiny_llama.tokenize(["a", 3])  # type: ignore[list-item]


def test_token_id_needs_one_token(tiny_llama: ls.Model) -> None:
    i = tiny_llama.token_id("the")
    assert tiny_llama.tokenizer.decode([i]) == "the"
    with pytest.raises(ValueError, match="tokens"):
        tiny_llama.token_id("the quick brown fox")


def test_chat_without_template_is_an_error() -> None:
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        tokenize(tok, ["hi"], chat=True)


def test_capture_accepts_hook_names(tiny_llama: ls.Model) -> None:
    with ls.capture(tiny_llama, ["blocks.1.hook_resid_post"]) as acts:
        tiny_llama("hello")
    assert torch.equal(acts["blocks.1.hook_resid_post"], acts[Site("resid_post", 1)])
