"""Activation patching: no-op on clean-into-clean, batched == one at a time, per-row edits exact."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope import circuits as C
from lmscope.core import edits
from lmscope.core.sites import Site

from ._toys import toy_task


@pytest.fixture(scope="module")
def model() -> ls.Model:
    return ls.load_tiny("llama")


def _specs(model: ls.Model, seq: int) -> list[C.PatchSpec]:
    L, H = model.shape.n_layers, model.shape.n_heads
    out = [C.PatchSpec(Site("resid_post", la), p) for la in range(L) for p in range(seq)]
    out += [C.PatchSpec(Site("attn_z", la), None, h) for la in range(L) for h in range(H)]
    out += [C.PatchSpec(Site("attn_z", 1), 2, 3), C.PatchSpec(Site("mlp_out", 0)), C.PatchSpec(Site("attn_out", 2), -1)]
    return out


def test_clean_into_clean_is_a_no_op(model: ls.Model) -> None:
    task = toy_task(model)
    clean, _ = task.batches(model)
    base = task.metric(model(clean)).mean()
    res = C.patch_sweep(model, clean, clean, _specs(model, clean.shape[1]), task.metric, copies=7)
    assert torch.allclose(res.values, base.expand_as(res.values), atol=1e-5)
    assert res.clean == pytest.approx(float(base)) and res.corrupt == pytest.approx(float(base))


def test_batched_equals_single_patches_and_a_naive_reference(model: ls.Model) -> None:
    task = toy_task(model)
    clean, corrupt = task.batches(model)
    specs = _specs(model, clean.shape[1])
    batched = C.patch_sweep(model, clean, corrupt, specs, task.metric, copies=16, reuse=False)
    single = C.patch_sweep(model, clean, corrupt, specs, task.metric, copies=1, reuse=False)
    assert torch.allclose(batched.values, single.values, atol=1e-5)
    assert batched.forwards == -(-len(specs) // 16) and single.forwards == len(specs)
    for spec, value in list(zip(specs, batched.values, strict=True))[::7]:  # an independent reference: one plain edit
        with ls.capture(model, [spec.site]) as acts:
            model(clean)
        src = acts[spec.site]

        def put(x: torch.Tensor, spec: C.PatchSpec = spec, src: torch.Tensor = src) -> torch.Tensor:
            x = x.clone()
            pos = slice(None) if spec.position is None else spec.position
            if spec.head is None:
                x[:, pos] = src[:, pos]
            else:
                x[:, pos, spec.head] = src[:, pos, spec.head]
            return x

        with ls.intervene(model, {spec.site: edits.custom(put)}):
            ref = task.metric(model(corrupt)).mean()
        assert float(value) == pytest.approx(float(ref), abs=1e-5)
    assert ls.active_hooks(model) == []


def test_full_patch_restores_clean_and_grids_have_the_right_shape(model: ls.Model) -> None:
    task = toy_task(model)
    grid = C.patching.resid_by_layer_pos(model, task, copies=8)
    L, seq = model.shape.n_layers, task.batches(model)[0].shape[1]
    assert grid.values.shape == (L, seq)
    # patching the whole last-position residual of the last layer restores the clean metric exactly
    assert float(grid.values[-1, -1]) == pytest.approx(1.0, abs=1e-4)
    assert C.patching.heads(model, task).values.shape == (L, model.shape.n_heads)
    assert C.patching.layer_outputs(model, task).values.shape == (2, L)
    assert C.patching.head_by_pos(model, task, layers=[2]).values.shape == (model.shape.n_heads, seq)
    fig = C.heatmap(grid)
    assert fig is not None


def test_bad_inputs_raise(model: ls.Model) -> None:
    task = toy_task(model)
    clean, corrupt = task.batches(model)
    with pytest.raises(ValueError, match="head"):
        C.PatchSpec(Site("resid_post", 0), head=1)
    with pytest.raises(IndexError, match="position"):
        C.patch_sweep(model, clean, corrupt, [C.PatchSpec(Site("resid_post", 0), 99)], task.metric)
    with pytest.raises(ValueError, match="differ in shape"):
        C.patch_sweep(model, clean, model.tokenize(["a b"]), [C.PatchSpec(Site("resid_post", 0))], task.metric)
