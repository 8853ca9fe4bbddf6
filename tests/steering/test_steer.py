"""Steering during generation (KV cache vs no cache), directional ablation, positions."""

from __future__ import annotations

import pytest
import torch

from lmscope.core.hooks import active_hooks, capture
from lmscope.core.sites import Site
from lmscope.steering import SteeringVector, ablate, steer


def _vec(m, layers=(1,), seed=0, norm=4.0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    d = m.shape.d_model
    return SteeringVector({layer: torch.randn(d, generator=g) * norm / d**0.5 for layer in layers}, d)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("positions", ["generated", "all", "prompt"])
def test_kv_cache_equals_no_cache_under_steering(family: str, positions: str) -> None:
    import lmscope as ls

    m = ls.load_tiny(family)
    vec = _vec(m, layers=(0, 2))
    prompts = ["hello world", "the quick brown fox jumps"]
    with steer(m, vec, scale=3.0, positions=positions):
        cached = m.generate_tokens(prompts, max_new_tokens=12, use_cache=True)
        plain = m.generate_tokens(prompts, max_new_tokens=12, use_cache=False)
    unsteered = m.generate_tokens(prompts, max_new_tokens=12)
    assert torch.equal(cached, plain)
    assert not torch.equal(cached, unsteered)  # the vector is strong enough to change greedy tokens
    assert active_hooks(m) == []


def test_steer_adds_exactly_at_chosen_positions(tiny_llama) -> None:
    m = tiny_llama
    vec = _vec(m, layers=(1,))
    site = Site("resid_post", 1)
    batch = m.tokenize(["hello world again"])
    with capture(m, [site]) as clean:
        m(batch)
    with steer(m, vec, scale=-2.0, positions=[0, 2]), capture(m, [site]) as st:
        m(batch)
    diff = st[site] - clean[site]
    assert torch.allclose(diff[0, 0], -2.0 * vec[1], atol=1e-6) and torch.allclose(diff[0, 2], -2.0 * vec[1], atol=1e-6)
    assert torch.equal(diff[0, 1], torch.zeros_like(diff[0, 1]))


def test_steer_errors(tiny_llama) -> None:
    m = tiny_llama
    with pytest.raises(ValueError, match="d_model"):
        with steer(m, SteeringVector({1: torch.ones(3)}, 3)):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with steer(m, SteeringVector({9: torch.ones(m.shape.d_model)}, m.shape.d_model)):
            pass
    assert active_hooks(m) == []


def test_ablation_removes_the_direction_everywhere(tiny_llama) -> None:
    m = tiny_llama
    u = torch.randn(m.shape.d_model, generator=torch.Generator().manual_seed(1))
    sites = [Site("resid_post", layer) for layer in range(m.shape.n_layers)]
    batch = m.tokenize(["hello world", "the quick brown fox"])
    with ablate(m, u), capture(m, sites) as acts:
        m(batch)
        gen = m.generate_tokens(["hello world"], max_new_tokens=6)
    unit = u / u.norm()
    for s in sites:
        assert float((acts[s] @ unit).abs().max()) < 1e-5
    with ablate(m, u):
        assert torch.equal(gen, m.generate_tokens(["hello world"], max_new_tokens=6, use_cache=False))
    with pytest.raises(ValueError, match="shape"):
        with ablate(m, torch.ones(3)):
            pass
