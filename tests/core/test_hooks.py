"""RELIABILITY.md A1-A7: hooks never leak and never lie (every tiny family, eager fp32)."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.core import edits
from lmscope.core.sites import Site

from ._util import PROMPTS, clean_logits, editable_sites, hf_forward, hook_counts


@pytest.fixture(scope="module")
def batch_of(request):
    cache: dict[str, ls.Batch] = {}

    def get(model: ls.Model) -> ls.Batch:
        if model.model_id not in cache:
            cache[model.model_id] = model.tokenize(PROMPTS)
        return cache[model.model_id]

    return get


# ---- A1 -------------------------------------------------------------------------------------------
def test_a1_identity_edits_every_site_bitwise(tiny: ls.Model, batch_of) -> None:
    """custom(lambda x: x) and add(zeros) at every site kind leave the logits bitwise unchanged."""
    batch = batch_of(tiny)
    clean = clean_logits(tiny, batch)
    sites = editable_sites(tiny)
    assert len(sites) > 10 * tiny.shape.n_layers
    for site in sites:
        width = tiny.site_width(site)
        for edit in (edits.custom(lambda x: x), edits.add(torch.zeros(width))):
            with ls.intervene(tiny, {site: edit}):
                out = tiny(batch)
            assert torch.equal(out, clean), f"{type(edit).__name__} at {site} changed the logits"
    # All of them at once, each site with both edits chained.
    every = {s: [edits.custom(lambda x: x), edits.add(torch.zeros(tiny.site_width(s)))] for s in sites}
    with ls.intervene(tiny, every):
        assert torch.equal(tiny(batch), clean)
    assert ls.active_hooks(tiny) == []


def test_a1_identity_edit_is_not_vacuous(tiny: ls.Model, batch_of) -> None:
    """The same hooks do change the logits when the edit is not the identity (the test above has teeth)."""
    batch = batch_of(tiny)
    clean = clean_logits(tiny, batch)
    for site in editable_sites(tiny, heads=False)[1:-1:5]:
        with ls.intervene(tiny, {site: edits.custom(lambda x: x * 1.5 + 0.1)}):
            assert not torch.equal(tiny(batch), clean), f"an edit at {site} had no effect"


# ---- A2 -------------------------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


def _raise(exc: BaseException):
    def fn(x):
        raise exc

    return fn


@pytest.mark.parametrize("exc", [Boom("in hook"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a2_exception_inside_hook(tiny: ls.Model, batch_of, exc: BaseException) -> None:
    batch = batch_of(tiny)
    hf_forward(tiny, batch, output_hidden_states=True)  # HF installs its own hooks lazily; let it first
    before = hook_counts(tiny)
    clean = clean_logits(tiny, batch)
    with pytest.raises(type(exc)):
        with ls.capture(tiny, [Site("resid_post", 0), Site("mlp_post", 1)]):
            with ls.intervene(tiny, {Site("resid_post", 1): edits.custom(_raise(exc))}):
                tiny(batch)
    assert hook_counts(tiny) == before
    assert ls.active_hooks(tiny) == []
    assert torch.equal(clean_logits(tiny, batch), clean)


@pytest.mark.parametrize("exc", [Boom("in block"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a2_exception_inside_with_block(tiny: ls.Model, batch_of, exc: BaseException) -> None:
    batch = batch_of(tiny)
    hf_forward(tiny, batch, output_hidden_states=True)
    before = hook_counts(tiny)
    clean = clean_logits(tiny, batch)
    v = torch.ones(tiny.shape.d_model)
    with pytest.raises(type(exc)):
        with ls.intervene(tiny, {Site("resid_pre", 1): edits.add(v)}), ls.capture(tiny, tiny.sites(["resid_post"])):
            assert len(ls.active_hooks(tiny)) > 0
            tiny(batch)
            raise exc
    assert hook_counts(tiny) == before
    assert ls.active_hooks(tiny) == []
    assert torch.equal(clean_logits(tiny, batch), clean)


def test_a2_bad_second_site_during_registration(tiny: ls.Model, batch_of) -> None:
    batch = batch_of(tiny)
    hf_forward(tiny, batch, output_hidden_states=True)
    before = hook_counts(tiny)
    clean = clean_logits(tiny, batch)
    n = tiny.shape.n_layers
    with pytest.raises(IndexError, match=f"n_layers={n}"):
        with ls.capture(tiny, [Site("resid_post", 0), Site("mlp_out", 1), Site("resid_post", n)]):
            pass  # pragma: no cover
    assert hook_counts(tiny) == before and ls.active_hooks(tiny) == []
    with pytest.raises(IndexError, match=f"n_layers={n}"):
        with ls.intervene(tiny, {Site("resid_post", 0): edits.scale(2.0), Site("attn_out", n + 3): edits.zero()}):
            pass  # pragma: no cover
    assert hook_counts(tiny) == before and ls.active_hooks(tiny) == []
    with pytest.raises(ValueError, match="width"):
        with ls.intervene(tiny, {Site("resid_post", 0): edits.scale(2.0), Site("resid_post", 1): edits.add(torch.ones(3))}):
            pass  # pragma: no cover
    assert hook_counts(tiny) == before and ls.active_hooks(tiny) == []
    assert torch.equal(clean_logits(tiny, batch), clean)


def test_a2_bad_site_on_sdpa_model_mid_registration() -> None:
    """attn_pattern needs eager attention: the error comes after other hooks were registered."""
    model = ls.load_tiny("llama", attn_implementation="sdpa")
    batch = model.tokenize(PROMPTS)
    before = hook_counts(model)
    clean = clean_logits(model, batch)
    with pytest.raises(NotImplementedError, match="eager"):
        with ls.capture(model, [Site("resid_post", 0), Site("attn_pattern", 1)]):
            pass  # pragma: no cover
    assert hook_counts(model) == before and ls.active_hooks(model) == []
    assert torch.equal(clean_logits(model, batch), clean)


# ---- A3 -------------------------------------------------------------------------------------------
def test_a3_nested_contexts_restore_outer_state(tiny: ls.Model, batch_of) -> None:
    """capture inside steer inside patch: leaving each inner block restores the outer state exactly."""
    batch = batch_of(tiny)
    base = hook_counts(tiny)
    L = tiny.shape.n_layers
    with ls.capture(tiny, [Site("resid_post", 0)]) as src:
        tiny(tiny.tokenize(["a different prompt of some length"] * len(PROMPTS)))
    source = src[Site("resid_post", 0)][:, : batch.shape[1]]
    v = torch.randn(tiny.shape.d_model, generator=torch.Generator().manual_seed(0))
    with ls.intervene(tiny, {Site("resid_post", 0): edits.patch(source, positions=[0, 1])}):
        patched = tiny(batch)
        records_patch, counts_patch = ls.active_hooks(tiny), hook_counts(tiny)
        with ls.intervene(tiny, {Site("resid_mid" if not tiny.is_parallel else "attn_out", L - 1): edits.add(v)}):
            steered = tiny(batch)
            records_steer, counts_steer = ls.active_hooks(tiny), hook_counts(tiny)
            with ls.capture(tiny, [Site("mlp_post", 1), Site("resid_post", L - 1)]) as acts:
                assert torch.equal(tiny(batch), steered)
            assert ls.active_hooks(tiny) == records_steer and hook_counts(tiny) == counts_steer
            assert torch.equal(tiny(batch), steered)
        assert ls.active_hooks(tiny) == records_patch and hook_counts(tiny) == counts_patch
        assert torch.equal(tiny(batch), patched)
    assert ls.active_hooks(tiny) == [] and hook_counts(tiny) == base
    assert not torch.equal(patched, steered) and not torch.equal(patched, clean_logits(tiny, batch))
    assert acts[Site("mlp_post", 1)].shape[-1] == tiny.shape.d_mlp


def test_a3_nested_edits_at_one_site_apply_outer_then_inner(tiny: ls.Model, batch_of) -> None:
    """A steer inside a patch is kept: the inner context edits what the outer context produced."""
    batch = batch_of(tiny)
    d = tiny.shape.d_model
    ones, zeros = torch.ones(d), torch.zeros(d)
    for site in (Site("resid_post", 1), Site("resid_pre", 1), Site("mlp_out", 0)):
        with ls.intervene(tiny, {site: edits.replace(zeros)}):
            with ls.intervene(tiny, {site: edits.add(ones)}), ls.capture(tiny, [site]) as acts:
                out = hf_forward(tiny, batch, output_hidden_states=True)
        assert torch.equal(acts[site], torch.ones_like(acts[site])), f"inner steer lost under outer replace at {site}"
        if site.kind == "resid_post":
            assert torch.equal(out.hidden_states[2], acts[site])
        with ls.intervene(tiny, {site: edits.add(ones)}):
            with ls.intervene(tiny, {site: edits.replace(zeros)}), ls.capture(tiny, [site]) as acts:
                tiny(batch)
        assert torch.equal(acts[site], torch.zeros_like(acts[site]))
        # The same order as one context given a list.
        with ls.intervene(tiny, {site: [edits.replace(zeros), edits.add(ones)]}), ls.capture(tiny, [site]) as acts:
            tiny(batch)
        assert torch.equal(acts[site], torch.ones_like(acts[site]))
    assert ls.active_hooks(tiny) == []


# ---- A4 / A5 --------------------------------------------------------------------------------------
def test_a4_user_hooks_survive(tiny: ls.Model, batch_of) -> None:
    batch = batch_of(tiny)
    seen: list[torch.Tensor] = []
    layer = tiny.layers[1]
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    pre = tiny.layers[0].register_forward_pre_hook(lambda m, a: None)
    try:
        with ls.capture(tiny, [Site("resid_post", 1)]) as acts, ls.intervene(tiny, {Site("resid_post", 0): edits.scale(1.0)}):
            tiny(batch)
        assert torch.equal(seen[-1], acts[Site("resid_post", 1)])
        assert handle.id in layer._forward_hooks and pre.id in tiny.layers[0]._forward_pre_hooks
        n = len(seen)
        tiny(batch)
        assert len(seen) == n + 1, "the user's hook stopped firing after lmscope's context"
    finally:
        handle.remove()
        pre.remove()


def test_a4_hf_output_hidden_states_survive(tiny: ls.Model, batch_of) -> None:
    batch = batch_of(tiny)
    ref = hf_forward(tiny, batch, output_hidden_states=True).hidden_states
    with ls.capture(tiny, tiny.sites(["resid_post"])):
        inside = hf_forward(tiny, batch, output_hidden_states=True).hidden_states
    after = hf_forward(tiny, batch, output_hidden_states=True).hidden_states
    assert len(ref) == len(inside) == len(after) == tiny.shape.n_layers + 1
    for a, b, c in zip(ref, inside, after, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("hf_first", [True, False], ids=["hf-hooks-first", "lmscope-first"])
@pytest.mark.parametrize("capture_outer", [True, False], ids=["capture-outer", "steer-outer"])
def test_a5_hidden_states_see_the_steering(family: str, hf_first: bool, capture_outer: bool) -> None:
    """With a steering edit at resid_post L, HF hidden_states[L+1] == our capture, whatever came first."""
    model = ls.load_tiny(family)  # fresh: HF installs its capture hooks on first use
    batch = model.tokenize(PROMPTS)
    L = 1
    v = torch.randn(model.shape.d_model, generator=torch.Generator().manual_seed(1)) * 3
    if hf_first:
        hf_forward(model, batch, output_hidden_states=True)
    site = Site("resid_post", L)
    steer = ls.intervene(model, {site: edits.add(v)})
    cap = ls.capture(model, [site])
    first, second = (cap, steer) if capture_outer else (steer, cap)
    with first as a, second as b:
        acts = a if capture_outer else b
        out = hf_forward(model, batch, output_hidden_states=True)
    assert torch.equal(out.hidden_states[L + 1], acts[site])
    clean = hf_forward(model, batch, output_hidden_states=True).hidden_states[L + 1]
    assert not torch.equal(clean, acts[site])
    assert torch.allclose(acts[site] - clean, v.expand_as(clean), atol=1e-5)


# ---- A6 / A7 --------------------------------------------------------------------------------------
def test_a6_gradient_capture_leaves_nothing_behind(tiny: ls.Model, batch_of) -> None:
    batch = batch_of(tiny)
    before = hook_counts(tiny)
    site = Site("resid_post", 1)
    with ls.capture(tiny, [site, Site("mlp_post", 0)], grads=True) as acts:
        logits = tiny(batch, grad=True)
        logits[:, -1].logsumexp(-1).sum().backward()
    assert hook_counts(tiny) == before and ls.active_hooks(tiny) == []
    # Oracle: autograd on HF's own hidden state of the same graph.
    out = tiny.hf(**batch.model_inputs(), use_cache=False, output_hidden_states=True)
    h = out.hidden_states[2]
    (g,) = torch.autograd.grad(out.logits[:, -1].logsumexp(-1).sum(), h)
    assert torch.allclose(acts.grads[site], g, atol=1e-6)
    assert acts.grads[Site("mlp_post", 0)].shape[-1] == tiny.shape.d_mlp
    tiny.hf.zero_grad(set_to_none=True)


def test_a7_active_hooks_empty_after_every_public_call(tiny: ls.Model, batch_of) -> None:
    batch = batch_of(tiny)
    v = torch.ones(tiny.shape.d_model)
    calls = [
        lambda: tiny(batch),
        lambda: tiny.generate(["hello"], max_new_tokens=2),
        lambda: tiny.unembed(torch.zeros(1, tiny.shape.d_model)),
    ]
    for call in calls:
        call()
        assert ls.active_hooks(tiny) == []
    with ls.capture(tiny, [Site("resid_post", 0)]):
        assert [r.owner for r in ls.active_hooks(tiny)] == ["positions", "capture"]
        tiny(batch)
    assert ls.active_hooks(tiny) == []
    with ls.intervene(tiny, {Site("resid_post", 0): edits.add(v)}):
        assert {r.owner for r in ls.active_hooks(tiny)} == {"positions", "intervene"}
        tiny.generate(["hello"], max_new_tokens=2)
    assert ls.active_hooks(tiny) == []
    with ls.capture(tiny, [Site("resid_post", 0), Site("resid_post", 2)], stop_early=True) as acts:
        assert tiny(batch) is None
    assert ls.active_hooks(tiny) == []
    assert Site("resid_post", 2) in acts


def test_stop_early_records_the_same_values(tiny: ls.Model, batch_of) -> None:
    batch = batch_of(tiny)
    hs = hf_forward(tiny, batch, output_hidden_states=True).hidden_states
    with ls.capture(tiny, [Site("resid_post", 0)], stop_early=True) as acts:
        assert tiny(batch) is None
    assert torch.equal(acts[Site("resid_post", 0)], hs[1])


def test_stop_early_records_every_site_tied_for_deepest(tiny: ls.Model, batch_of) -> None:
    """q/k/v of one layer, or several heads of one site, tie in depth: all of them are recorded."""
    batch = batch_of(tiny)
    L = tiny.shape.n_layers
    groups = [
        [Site("resid_post", 0), Site("q", 1), Site("k", 1), Site("v", 1)],
        [Site("attn_z", L - 1, head=h) for h in range(tiny.shape.n_heads)],
        [Site("mlp_out", 0), Site("resid_post", 1), Site("resid_post", 1)],
    ]
    for sites in groups:
        with ls.capture(tiny, sites) as full:
            tiny(batch)
        with ls.capture(tiny, sites, stop_early=True) as early:
            assert tiny(batch) is None
        assert set(early) == set(sites), f"stop_early lost {set(sites) - set(early)}"
        for site in sites:
            assert torch.equal(early[site], full[site])
    assert ls.active_hooks(tiny) == []


def test_a6_gradients_at_fused_and_per_head_sites_match_autograd(tiny: ls.Model, batch_of) -> None:
    """acts.grads at q/k/v/attn_z/mlp_post equals autograd on the raw module tensors (read by plain hooks)."""
    from lmscope.core.access import resolve

    batch = batch_of(tiny)
    sites = [Site("v", 1), Site("q", 1, head=1), Site("attn_z", 1), Site("attn_z", 0, head=2), Site("mlp_post", 0)]
    with ls.capture(tiny, sites, grads=True) as acts:
        tiny(batch, grad=True)[:, -1].logsumexp(-1).sum().backward()
    tiny.hf.zero_grad(set_to_none=True)
    # Oracle: plain PyTorch hooks keep the raw tensors; autograd gives their gradients; the site reads them.
    raws: dict[Site, torch.Tensor] = {}
    handles = []
    for site in sites:
        acc = resolve(tiny, site)
        if acc.point == "input":
            handles.append(acc.module.register_forward_pre_hook(lambda m, a, site=site: raws.__setitem__(site, a[0])))
        else:
            handles.append(acc.module.register_forward_hook(lambda m, a, o, site=site: raws.__setitem__(site, o)))
    try:
        out = tiny.hf(**batch.model_inputs(), use_cache=False).logits[:, -1].logsumexp(-1).sum()
        grads = torch.autograd.grad(out, [raws[s] for s in sites])
    finally:
        for h in handles:
            h.remove()
    for site, g in zip(sites, grads, strict=True):
        want = resolve(tiny, site).read(g)
        assert acts.grads[site].shape == want.shape
        assert torch.allclose(acts.grads[site], want, atol=1e-6), site
