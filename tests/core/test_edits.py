"""RELIABILITY.md B10 and D17, plus what each edit does to the tensor it touches.

Oracles: the clean run itself (patching it back in is bitwise a no-op), naive tensor arithmetic
on the captured values, causality (an edit at position k cannot change earlier positions), and
the attention identity z = pattern @ v.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmscope as ls
from lmscope.core import edits
from lmscope.core.architectures import get_module
from lmscope.core.sites import Site

from ._util import PROMPTS, clean_logits, editable_sites

HYP = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# ---- B10 ------------------------------------------------------------------------------------------
def test_b10_patch_clean_into_clean_is_bitwise_noop(tiny: ls.Model) -> None:
    batch = tiny.tokenize(PROMPTS)
    clean = clean_logits(tiny, batch)
    sites = editable_sites(tiny)
    with ls.capture(tiny, sites) as acts:
        tiny(batch)
    for site in sites:
        with ls.intervene(tiny, {site: edits.patch(acts[site])}):
            assert torch.equal(tiny(batch), clean), f"patch at {site}"
    with ls.intervene(tiny, {site: edits.patch(acts[site]) for site in sites}):
        assert torch.equal(tiny(batch), clean)
    # Patching only some neurons / positions from the same run is also a no-op.
    mlp = Site("mlp_post", 1)
    with ls.intervene(tiny, {mlp: edits.patch(acts[mlp], index=[3, 7], positions=[1, 2])}):
        assert torch.equal(tiny(batch), clean)


def test_b10_mean_ablate_with_the_value_itself_is_bitwise_noop(tiny: ls.Model) -> None:
    one = tiny.tokenize(["h"])  # a single token, one row
    assert one.shape == (1, 1)
    clean = clean_logits(tiny, one)
    sites = editable_sites(tiny)
    with ls.capture(tiny, sites) as acts:
        tiny(one)
    for site in sites:
        mean = acts[site].mean(dim=(0, 1))  # the mean over one value is the value
        with ls.intervene(tiny, {site: edits.mean_ablate(mean)}):
            assert torch.equal(tiny(one), clean), f"mean_ablate at {site}"
    # At one position of a longer prompt, with the value that position has.
    batch = tiny.tokenize(PROMPTS[1])
    clean = clean_logits(tiny, batch)
    site = Site("resid_post", 0)
    with ls.capture(tiny, [site]) as acts:
        tiny(batch)
    with ls.intervene(tiny, {site: edits.mean_ablate(acts[site][0, 2], positions=2)}):
        assert torch.equal(tiny(batch), clean)
    with ls.intervene(tiny, {site: edits.mean_ablate(acts[site][0, 3], positions=2)}):
        assert not torch.equal(tiny(batch), clean)


# ---- edit semantics at the model level ------------------------------------------------------------
def test_add_at_one_position_is_exact_and_causal(tiny: ls.Model) -> None:
    batch = tiny.tokenize(PROMPTS[1])
    L, k = tiny.shape.n_layers, 3
    v = torch.randn(tiny.shape.d_model, generator=torch.Generator().manual_seed(0))
    sites = [Site("resid_post", 0), Site("resid_post", L - 1)]
    with ls.capture(tiny, sites) as clean:
        tiny(batch)
    with ls.intervene(tiny, {Site("resid_post", 0): edits.add(v, scale=2.0, positions=k)}), ls.capture(tiny, sites) as act:
        tiny(batch)
    a0, c0 = act[sites[0]], clean[sites[0]]
    assert torch.allclose(a0[0, k] - c0[0, k], 2.0 * v, atol=1e-6)
    others = [p for p in range(batch.shape[1]) if p != k]
    assert torch.equal(a0[0, others], c0[0, others])
    # Later layers: positions before k are untouched (causal attention), k onwards changed.
    assert torch.equal(act[sites[1]][0, :k], clean[sites[1]][0, :k])
    assert not torch.allclose(act[sites[1]][0, k:], clean[sites[1]][0, k:])


def test_resid_mid_edit_lands_on_resid_mid(tiny: ls.Model) -> None:
    if tiny.is_parallel:
        with pytest.raises(NotImplementedError, match="parallel"):
            with ls.intervene(tiny, {Site("resid_mid", 0): edits.zero()}):
                pass  # pragma: no cover
        return
    batch = tiny.tokenize(PROMPTS)
    v = torch.randn(tiny.shape.d_model, generator=torch.Generator().manual_seed(2))
    sites = [Site("resid_pre", 1), Site("resid_mid", 1), Site("attn_out", 1)]
    with ls.capture(tiny, sites) as clean:
        tiny(batch)
    with ls.intervene(tiny, {Site("resid_mid", 1): edits.add(v)}), ls.capture(tiny, sites) as act:
        tiny(batch)
    assert torch.equal(act[sites[0]], clean[sites[0]])
    assert torch.allclose(act[sites[1]], clean[sites[1]] + v, atol=1e-5)
    assert torch.allclose(act[sites[0]] + act[sites[2]], act[sites[1]], atol=1e-6)


def test_resid_mid_edit_composes_with_resid_pre_edits(tiny: ls.Model) -> None:
    """Replacing resid_mid wins over a resid_pre edit of the same block, in one context or nested."""
    if tiny.is_parallel:
        return
    batch = tiny.tokenize(PROMPTS)
    v = torch.ones(tiny.shape.d_model)
    mid, pre = Site("resid_mid", 1), Site("resid_pre", 1)
    with ls.intervene(tiny, {pre: edits.add(v), mid: edits.zero()}), ls.capture(tiny, [mid]) as same:
        tiny(batch)
    with ls.intervene(tiny, {pre: edits.add(v)}):
        with ls.intervene(tiny, {mid: edits.zero()}), ls.capture(tiny, [mid]) as nested:
            tiny(batch)
    with ls.intervene(tiny, {mid: edits.zero()}):
        with ls.intervene(tiny, {pre: edits.add(v)}), ls.capture(tiny, [mid]) as reversed_:
            tiny(batch)
    for acts in (same, nested, reversed_):
        assert acts[mid].abs().max() <= 1e-5


def test_zeroing_a_value_head_zeroes_its_query_heads(tiny: ls.Model) -> None:
    """Writes through fused / per-head / GQA layouts land on the right head: z = pattern @ v."""
    batch = tiny.tokenize(PROMPTS)
    s = tiny.shape
    group = s.n_heads // s.n_kv_heads
    kv = s.n_kv_heads - 1
    with ls.intervene(tiny, {Site("v", 1, head=kv): edits.zero()}), ls.capture(tiny, [Site("attn_z", 1), Site("v", 1)]) as a:
        tiny(batch)
    z = a[Site("attn_z", 1)]
    assert torch.equal(a[Site("v", 1)][:, :, kv], torch.zeros_like(a[Site("v", 1)][:, :, kv]))
    hit = list(range(kv * group, (kv + 1) * group))
    assert z[:, :, hit].abs().max() == 0
    assert z[:, :, [h for h in range(s.n_heads) if h not in hit]].abs().amax(dim=(0, 1, 3)).min() > 0


def test_head_and_neuron_edits_touch_only_their_slice(tiny: ls.Model) -> None:
    batch = tiny.tokenize(PROMPTS)
    block = tiny.layers[0]
    sites = [Site("attn_z", 0), Site("attn_out", 0), Site("mlp_post", 0), Site("mlp_out", 0)]
    with ls.capture(tiny, sites) as clean:
        tiny(batch)
    plan = {Site("attn_z", 0, head=2): edits.scale(0.0), Site("mlp_post", 0): edits.zero(index=[5, 17])}
    with ls.intervene(tiny, plan), ls.capture(tiny, sites) as act:
        tiny(batch)
    z, z0 = act[sites[0]], clean[sites[0]]
    assert z[:, :, 2].abs().max() == 0
    assert torch.equal(z[:, :, [0, 1, 3]], z0[:, :, [0, 1, 3]])
    o = get_module(block, tiny.arch.o_proj)(z.flatten(-2))
    if tiny.arch.attn_out != tiny.arch.o_proj:
        o = get_module(block, tiny.arch.attn_out)(o)
    assert torch.allclose(act[sites[1]], o, atol=1e-6)
    m, m0 = act[sites[2]], clean[sites[2]]
    assert m[..., [5, 17]].abs().max() == 0
    keep = [i for i in range(tiny.shape.d_mlp) if i not in (5, 17)]
    if tiny.is_parallel:  # the MLP input does not depend on attention in a parallel block
        assert torch.equal(m[..., keep], m0[..., keep])
    d = get_module(block, tiny.arch.down_proj)(m)
    if tiny.arch.mlp_out != tiny.arch.mlp:
        d = get_module(block, tiny.arch.mlp_out)(d)
    assert torch.allclose(act[sites[3]], d, atol=1e-6)


# ---- edit semantics on plain tensors --------------------------------------------------------------
def test_positions_on_plain_tensors() -> None:
    x = torch.zeros(2, 5, 3)
    pos = torch.arange(5)
    v = torch.ones(3)
    out = edits.add(v, positions="prompt")(x, pos, prompt_len=3)
    assert out[:, :3].eq(1).all() and out[:, 3:].eq(0).all()
    out = edits.add(v, positions="generated")(x, pos, prompt_len=3)
    assert out[:, :3].eq(0).all() and out[:, 3:].eq(1).all()
    out = edits.add(v, positions=[0, -1])(x, pos, prompt_len=3)
    assert out[:, [0, 4]].eq(1).all() and out[:, 1:4].eq(0).all()
    out = edits.add(v, positions=torch.tensor([1, 3]))(x, pos, prompt_len=3)
    assert out[0, 1].eq(1).all() and out[1, 3].eq(1).all() and out.sum() == 6
    # A KV-cache step at absolute position 4 only.
    out = edits.add(v, positions="generated")(x[:, :1], torch.tensor([4]), prompt_len=3)
    assert out.eq(1).all()
    out = edits.add(v, positions=[2])(x[:, :1], torch.tensor([4]), prompt_len=3)
    assert out.eq(0).all()


def test_resample_draws_rows_of_the_pool_deterministically() -> None:
    pool = torch.arange(12.0).reshape(4, 3)
    x = torch.zeros(2, 5, 3)
    e = edits.resample(pool, seed=3)
    a, b = e(x, torch.arange(5), 5), e(x, torch.arange(5), 5)
    assert torch.equal(a, b)
    rows = a.reshape(-1, 3)
    assert all(any(torch.equal(r, p) for p in pool) for r in rows)
    assert not torch.equal(a, edits.resample(pool, seed=4)(x, torch.arange(5), 5))
    # One KV-cache step at position 3 draws what the whole pass drew at position 3.
    assert torch.equal(e(x[:, :1], torch.tensor([3]), 5), a[:, 3:4])
    heads = torch.zeros(2, 5, 4, 3)
    assert e(heads, torch.arange(5), 5).shape == heads.shape


def test_resample_generation_same_with_and_without_kv_cache(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    site = Site("resid_post", 1)
    with ls.capture(model, [site]) as acts:
        model(["a different text to resample from", "and another one"])
    plan = {site: edits.resample(acts[site].flatten(0, 1), seed=1)}
    with ls.intervene(model, plan):
        cached = model.generate_tokens(PROMPTS[:2], max_new_tokens=8, use_cache=True)
        uncached = model.generate_tokens(PROMPTS[:2], max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, model.generate_tokens(PROMPTS[:2], max_new_tokens=8))


def test_chain_applies_in_order() -> None:
    x = torch.ones(1, 2, 3)
    e = edits.chain(edits.add(torch.ones(3)), edits.scale(3.0))
    assert torch.equal(e(x, torch.arange(2), 2), torch.full_like(x, 6.0))
    e = edits.chain(edits.scale(3.0), edits.add(torch.ones(3)))
    assert torch.equal(e(x, torch.arange(2), 2), torch.full_like(x, 4.0))


# ---- D17: property tests --------------------------------------------------------------------------
floats = st.floats(-10, 10, allow_nan=False, width=32)


@st.composite
def vectors(draw, width: int = 64):
    return torch.tensor(draw(st.lists(floats, min_size=width, max_size=width)))


@HYP
@given(v=vectors(), site_i=st.integers(0, 10**6))
def test_d17_scale_zero_is_bitwise_identity(tiny_llama: ls.Model, v: torch.Tensor, site_i: int) -> None:
    model = tiny_llama
    batch = model.tokenize(PROMPTS[:2])
    sites = [s for s in model.sites() if model.site_width(s) == model.shape.d_model and s.kind != "logits"]
    site = sites[site_i % len(sites)]
    with ls.intervene(model, {site: edits.add(v, scale=0.0)}):
        assert torch.equal(model(batch), clean_logits(model, batch))


@HYP
@given(a=vectors(), b=vectors(), x=vectors(), s=st.floats(-3, 3, allow_nan=False))
def test_d17_add_a_then_b_equals_add_a_plus_b(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, s: float) -> None:
    x = x.expand(2, 3, 64)
    pos = torch.arange(3)
    two = edits.chain(edits.add(a, scale=s), edits.add(b, scale=s))(x, pos, 3)
    one = edits.add(a + b, scale=s)(x, pos, 3)
    tol = 1e-6 * max(1.0, float(x.abs().max() + abs(s) * (a.abs().max() + b.abs().max())))  # fp32 rounding of |values|
    assert (two - one).abs().max() <= tol


@HYP
@given(a=vectors(), b=vectors())
def test_d17_add_a_then_b_in_the_model(tiny_gpt2: ls.Model, a: torch.Tensor, b: torch.Tensor) -> None:
    model = tiny_gpt2
    batch = model.tokenize(PROMPTS[:2])
    site, read = Site("resid_post", 0), Site("resid_post", 0)
    with ls.intervene(model, {site: [edits.add(a), edits.add(b)]}), ls.capture(model, [read]) as two:
        l2 = model(batch)
    with ls.intervene(model, {site: edits.add(a + b)}), ls.capture(model, [read]) as one:
        l1 = model(batch)
    scale = max(1.0, float(two[read].abs().max()))
    assert (two[read] - one[read]).abs().max() <= 1e-6 * scale
    assert (l2 - l1).abs().max() <= 1e-4


@HYP
@given(d=vectors(), x=vectors())
def test_d17_project_out_twice_equals_once(d: torch.Tensor, x: torch.Tensor) -> None:
    if d.norm() < 1e-3:
        return
    x = x.expand(2, 3, 64)
    e = edits.project_out(d)
    pos = torch.arange(3)
    once = e(x, pos, 3)
    twice = e(once, pos, 3)
    u = d / d.norm()
    tol = 1e-6 * max(1.0, float(x.abs().max()))
    assert (twice - once).abs().max() <= 8 * tol
    assert (once @ u).abs().max() <= 8 * tol  # nothing left along u
    # The part of x orthogonal to u is kept.
    assert (once - (x - (x @ u)[..., None] * u)).abs().max() <= 8 * tol


@HYP
@given(d=vectors())
def test_d17_project_out_twice_in_the_model(tiny_llama: ls.Model, d: torch.Tensor) -> None:
    if d.norm() < 1e-3:
        return
    model = tiny_llama
    batch = model.tokenize(PROMPTS[:2])
    site = Site("resid_mid", 1)
    with ls.intervene(model, {site: edits.project_out(d)}):
        once = model(batch)
    with ls.intervene(model, {site: [edits.project_out(d), edits.project_out(d)]}):
        twice = model(batch)
    assert (once - twice).abs().max() <= 1e-5
