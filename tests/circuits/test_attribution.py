"""Attribution patching equals activation patching where the metric is linear in the activation."""

from __future__ import annotations

import torch

import lmscope as ls
from lmscope import circuits as C
from lmscope.core.sites import Site

from ._toys import linear_readout, toy_task


def test_node_attribution_is_exact_on_a_linear_readout() -> None:
    model = linear_readout(ls.load_tiny("llama"))
    task = toy_task(model)
    clean, corrupt = task.batches(model)
    L = model.shape.n_layers
    # logits are linear in the last layer's resid_post and in its MLP output (no final norm)
    specs = [C.PatchSpec(Site("resid_post", L - 1), p) for p in range(clean.shape[1])] + [C.PatchSpec(Site("mlp_out", L - 1))]
    exact = C.patch_sweep(model, clean, corrupt, specs, task.metric)
    approx = C.node_attribution(model, clean, corrupt, specs, task.metric)
    assert torch.allclose(approx.values, exact.values, atol=1e-4)
    assert abs(float(exact.normalized[-2]) - 1.0) < 1e-4  # last position, last layer: everything


def test_edge_attribution_is_exact_for_edges_into_the_logits() -> None:
    model = linear_readout(ls.load_tiny("llama"))
    task = toy_task(model)
    eap = C.edge_attribution(model, task)
    g = eap.graph
    edges = [(w, g.logits_reader) for w in range(g.n_writers)]
    exact = C.edge_patch_exact(model, task, edges, copies=5)
    est = torch.stack([eap.scores[w, r] for w, r in edges])
    assert torch.allclose(est, exact, atol=1e-4)
    # the writers' differences sum to the whole clean-corrupt gap of the linear readout
    assert abs(float(exact.sum()) - (eap.clean - eap.corrupt)) < 1e-3
    assert torch.isnan(eap.scores[~g.valid()]).all()


def test_attribution_correlates_with_patching_on_a_random_model() -> None:
    model = ls.load_tiny("llama")
    task = toy_task(model)
    clean, corrupt = task.batches(model)
    specs = [C.PatchSpec(Site("attn_z", la), None, h) for la in range(3) for h in range(4)]
    exact = C.patch_sweep(model, clean, corrupt, specs, task.metric)
    approx = C.node_attribution(model, clean, corrupt, specs, task.metric)
    assert C.correlation(approx.values, exact.values) > 0.9
    assert ls.active_hooks(model) == []
