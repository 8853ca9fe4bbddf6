"""RELIABILITY.md C15 and generation edge cases: edits act the same with and without the KV cache.

Oracles: generation without the KV cache (every step recomputes every position), and one plain
forward pass over the generated sequence.
"""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.core import edits
from lmscope.core.inputs import Batch, position_ids_from_mask
from lmscope.core.sites import Site

PROMPTS = ["The capital of France is", "hello"]


def _vector(model: ls.Model, seed: int = 0) -> torch.Tensor:
    v = torch.randn(model.shape.d_model, generator=torch.Generator().manual_seed(seed))
    return 8.0 * v / v.norm() * model.shape.d_model**0.5 / 4


def _gen(model: ls.Model, plan: dict, *, use_cache: bool, n: int) -> torch.Tensor:
    with ls.intervene(model, plan):
        return model.generate_tokens(PROMPTS, max_new_tokens=n, use_cache=use_cache)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_c15_steering_same_tokens_with_and_without_kv_cache(family: str) -> None:
    model = ls.load_tiny(family)
    prompt_len = model.tokenize(PROMPTS).shape[1]
    site = Site("resid_post", 1)
    v = _vector(model)
    plain = model.generate_tokens(PROMPTS, max_new_tokens=12, use_cache=True)
    assert torch.equal(plain, model.generate_tokens(PROMPTS, max_new_tokens=12, use_cache=False))
    k = prompt_len - 2
    plans = {
        "generated": ({site: edits.add(v, positions="generated")}, 12),
        ">=k": ({site: edits.add(v, positions=list(range(k, prompt_len + 40)))}, 12),
        "prompt": ({site: edits.add(v, positions="prompt")}, 12),
        "per-row": ({site: edits.add(v, positions=model.tokenize(PROMPTS).last_index)}, 12),
        "all": ({site: edits.add(v)}, 32),
    }
    for name, (plan, n) in plans.items():
        cached = _gen(model, plan, use_cache=True, n=n)
        uncached = _gen(model, plan, use_cache=False, n=n)
        assert cached.shape == (len(PROMPTS), n)
        assert torch.equal(cached, uncached), f"{family} steering {name}: KV cache changed the tokens"
        assert not torch.equal(cached[:, :12], plain), f"{family} steering {name} had no effect (test has no teeth)"
        assert ls.active_hooks(model) == []


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("pad", ["pad", "eos"])
def test_padded_batch_generation_equals_single_prompts(family: str, pad: str) -> None:
    model = ls.load_tiny(family, pad=pad)
    prompts = ["The capital of France is", "hello", "def f(x): return"]
    batch = model.generate_tokens(prompts, max_new_tokens=8)
    for i, p in enumerate(prompts):
        assert torch.equal(batch[i], model.generate_tokens([p], max_new_tokens=8)[0]), (family, pad, p)


def test_exception_during_generation_cleans_up(tiny_llama: ls.Model) -> None:
    from ._util import hook_counts

    model = tiny_llama
    clean = model.generate_tokens(PROMPTS, max_new_tokens=5)
    before = hook_counts(model)
    calls = {"n": 0}

    def fail_on_third_pass(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        with ls.intervene(model, {Site("resid_post", 1): edits.custom(fail_on_third_pass)}):
            model.generate_tokens(PROMPTS, max_new_tokens=5)
    assert calls["n"] == 3
    assert hook_counts(model) == before and ls.active_hooks(model) == [] and model._prompt_len is None
    assert torch.equal(model.generate_tokens(PROMPTS, max_new_tokens=5), clean)


def test_capture_around_generate_equals_one_forward(tiny: ls.Model) -> None:
    """With the KV cache, a capture holds the whole sequence, equal to one pass over it."""
    n = 6
    batch = tiny.tokenize(PROMPTS)
    sites = [Site("resid_post", 0), Site("attn_z", tiny.shape.n_layers - 1)]
    with ls.capture(tiny, sites) as acts:
        new = tiny.generate_tokens(batch, max_new_tokens=n)
    ids = torch.cat([batch.input_ids, new[:, :-1]], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(new[:, :-1])], dim=1)
    full = Batch(ids, mask, position_ids_from_mask(mask))
    with ls.capture(tiny, sites) as ref:
        tiny(full)
    real = mask.bool()
    for site in sites:
        assert acts[site].shape == ref[site].shape
        assert (acts[site][real] - ref[site][real]).abs().max() <= 1e-5, site


def test_generated_positions_leave_the_prompt_alone(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    batch = model.tokenize(PROMPTS)
    site = Site("resid_post", 2)
    with ls.capture(model, [site]) as clean:
        model(batch)
    v = _vector(model)
    with ls.intervene(model, {Site("resid_post", 0): edits.add(v, positions="generated")}), ls.capture(model, [site]) as acts:
        model.generate_tokens(batch, max_new_tokens=3)
    t = batch.shape[1]
    real = batch.attention_mask.bool()
    assert (acts[site][:, :t][real] - clean[site][real]).abs().max() <= 1e-5


def test_generate_shapes_and_types(tiny_gpt2: ls.Model) -> None:
    out = tiny_gpt2.generate("hello", max_new_tokens=3)
    assert isinstance(out, str)
    outs = tiny_gpt2.generate(["hello", "the quick"], max_new_tokens=3)
    assert isinstance(outs, list) and len(outs) == 2


def test_right_padded_batch_to_generate_is_an_error(tiny_llama: ls.Model) -> None:
    batch = tiny_llama.tokenize(PROMPTS, padding_side="right")
    assert (batch.attention_mask[:, -1] == 0).any()
    with pytest.raises(ValueError, match="left-padded"):
        tiny_llama.generate_tokens(batch, max_new_tokens=2)


def test_generation_past_the_context_window_is_an_error(tiny_gpt2: ls.Model) -> None:
    n = tiny_gpt2.shape.max_positions
    prompt = "hello " * (n - 20)
    assert tiny_gpt2.tokenize(prompt).shape[1] <= n
    with pytest.raises(ValueError, match=f"context window of {n}"):
        tiny_gpt2.generate(prompt, max_new_tokens=n)


def test_sampling_with_a_seed_is_reproducible(tiny_llama: ls.Model) -> None:
    a = tiny_llama.generate_tokens(PROMPTS, max_new_tokens=8, do_sample=True, seed=5)
    b = tiny_llama.generate_tokens(PROMPTS, max_new_tokens=8, do_sample=True, seed=5)
    c = tiny_llama.generate_tokens(PROMPTS, max_new_tokens=8, do_sample=True, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "mistral"])
def test_generation_across_a_sliding_window(family: str) -> None:
    """Positions stay absolute when the KV cache of sliding-window layers wraps (window 16, 29 tokens)."""
    model = ls.load_tiny(family, config_overrides={"sliding_window": 16})
    batch = model.tokenize(["the quick brown fox jumps over the lazy dog. hello world.", "hello"])
    assert batch.shape[1] > 16
    site = Site("resid_post", 1)
    with ls.capture(model, [site]) as acts:
        new = model.generate_tokens(batch, max_new_tokens=12)
    ids = torch.cat([batch.input_ids, new[:, :-1]], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(new[:, :-1])], dim=1)
    with ls.capture(model, [site]) as ref:
        model(Batch(ids, mask, position_ids_from_mask(mask)))
    real = mask.bool()
    assert (acts[site][real] - ref[site][real]).abs().max() <= 1e-5
    plan = {site: edits.add(_vector(model), positions=list(range(batch.shape[1] - 2, 100)))}
    assert torch.equal(_gen_batch(model, batch, plan, True), _gen_batch(model, batch, plan, False))


def _gen_batch(model: ls.Model, batch: Batch, plan: dict, use_cache: bool) -> torch.Tensor:
    with ls.intervene(model, plan):
        return model.generate_tokens(batch, max_new_tokens=12, use_cache=use_cache)


def test_stop_ends_generation_and_the_streamer_sees_each_token(tiny_llama) -> None:
    seen: list[list[int]] = []

    class Streamer:
        def put(self, value):
            seen.append(value.flatten().tolist())

        def end(self):
            seen.append([])

    full = tiny_llama.generate_tokens("the dog", max_new_tokens=8)
    made = []
    ids = tiny_llama.generate_tokens("the dog", max_new_tokens=8, streamer=Streamer(),
                                     stop=lambda: (made.append(1), len(made) >= 3)[1])  # fmt: skip
    assert ids.shape[1] == 3 and ids[0].tolist() == full[0, :3].tolist()
    assert seen[0] == tiny_llama.tokenize("the dog").input_ids[0].tolist()  # the prompt first
    assert [t for s in seen[1:-1] for t in s] == ids[0].tolist() and seen[-1] == []
