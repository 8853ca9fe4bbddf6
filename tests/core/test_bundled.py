"""The core promises on the bundled SmolLM2-135M-Instruct (a real, trained model), and a peer check.

B8/B9 parity, C13 padding, C15 KV-cache generation and C16 BOS on the real model; and lmscope's
captured residual stream against nnsight's, an independent library reading the same HF module.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

import lmscope as ls
from lmscope.core import edits
from lmscope.core.inputs import chat_text
from lmscope.core.sites import Site

pytestmark = pytest.mark.bundled

PROMPTS = ["The capital of France is", "One, two, three,", "The opposite of hot is"]
LAYERS = [0, 7, 15, 28]


@pytest.fixture(scope="module")
def reference(smollm: ls.Model):
    batch = smollm.tokenize(PROMPTS)
    with torch.no_grad():
        out = smollm.hf(**batch.model_inputs(), use_cache=False, output_hidden_states=True)
    L = smollm.shape.n_layers
    sites = [Site("resid_post", layer) for layer in LAYERS + [L - 1]] + [Site("final_norm")]
    with ls.capture(smollm, sites) as acts:
        logits = smollm(batch)
    return batch, out, acts, logits


def test_b8_b9_parity_on_the_bundled_model(smollm: ls.Model, reference) -> None:
    batch, out, acts, logits = reference
    L = smollm.shape.n_layers
    assert L == 30 and smollm.shape.d_model == 576
    for layer in LAYERS:
        assert torch.equal(acts[Site("resid_post", layer)], out.hidden_states[layer + 1]), layer
    assert (acts[Site("final_norm")] - out.hidden_states[-1]).abs().max() <= 1e-6
    assert torch.equal(logits, out.logits)
    lens = smollm.unembed(acts[Site("resid_post", L - 1)])
    assert (lens - logits).abs().max() <= 1e-5
    # The trained model knows the capital (sanity that the bundled weights are the real ones).
    paris = smollm.token_id(" Paris")
    assert int(logits[0, batch.last_index[0]].argmax()) == paris


@pytest.mark.parametrize("side", ["left", "right"])
def test_c13_padding_on_the_bundled_model(smollm: ls.Model, side: str) -> None:
    sites = [Site("resid_post", layer) for layer in (0, 3, 20, 29)]
    batch = smollm.tokenize(PROMPTS, padding_side=side)
    assert not batch.attention_mask.all()
    with ls.capture(smollm, sites) as acts:
        logits = smollm(batch)
    for i, prompt in enumerate(PROMPTS):
        with ls.capture(smollm, sites) as ref:
            ref_logits = smollm(prompt)
        real = batch.attention_mask[i].bool()
        assert (logits[i, batch.last_index[i]] - ref_logits[0, -1]).abs().max() <= 1e-4
        for site in sites:
            # SmolLM2 has massive activations (|x| ~ 2e4): batch-shape rounding is relative, ~1e-7 of the scale,
            # and shows even on the unpadded longest row. A padding bug would be O(1).
            scale = float(ref[site][0].abs().max())
            assert (acts[site][i, real] - ref[site][0]).abs().max() <= 2e-6 * scale, (site, i)


def test_c15_steered_generation_kv_equals_no_kv_on_the_bundled_model(smollm: ls.Model) -> None:
    n = 6
    with ls.capture(smollm, [Site("resid_post", 10)]) as acts:
        smollm(["I love this wonderful day", "I hate this awful day"])
    v = acts[Site("resid_post", 10)][0, -1] - acts[Site("resid_post", 10)][1, -1]
    plain = smollm.generate_tokens(PROMPTS[:2], max_new_tokens=n)
    for positions in ("generated", "all"):
        plan = {Site("resid_post", 10): edits.add(v, scale=6.0, positions=positions)}
        with ls.intervene(smollm, plan):
            cached = smollm.generate_tokens(PROMPTS[:2], max_new_tokens=n, use_cache=True)
            uncached = smollm.generate_tokens(PROMPTS[:2], max_new_tokens=n, use_cache=False)
        assert torch.equal(cached, uncached), positions
        assert not torch.equal(cached, plain), f"steering ({positions}) changed nothing"
    assert ls.active_hooks(smollm) == []


def test_c16_one_bos_with_the_bundled_chat_template(smollm: ls.Model) -> None:
    tok = smollm.tokenizer
    batch = smollm.tokenize(["What is 2+2?"], chat=True)
    ids = batch.input_ids[0].tolist()
    text = chat_text(tok, "What is 2+2?")
    # Exactly what the template wrote: the tokenizer added no BOS of its own on top.
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == text.count(tok.bos_token)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_peer_check_against_nnsight(smollm: ls.Model, reference) -> None:
    """nnsight, reading the same weights through its own tracing, sees the same residual stream."""
    nnsight = pytest.importorskip("nnsight")
    batch, _, acts, _ = reference
    fresh = ls.load()  # nnsight wraps the module's forward; keep the shared fixture untouched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = nnsight.LanguageModel(fresh.hf, tokenizer=fresh.tokenizer)
    saved = {}
    with torch.no_grad(), lm.trace(batch.model_inputs()):
        for layer in LAYERS:
            saved[layer] = lm.model.layers[layer].output.save()
    for layer in LAYERS:
        theirs = saved[layer][0] if isinstance(saved[layer], tuple) else saved[layer]
        assert theirs.shape == acts[Site("resid_post", layer)].shape
        assert (theirs - acts[Site("resid_post", layer)]).abs().max() <= 1e-6, layer
    del lm, fresh
    gc.collect()
