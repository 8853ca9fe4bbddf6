"""The implicit rank-1 update (Dherin et al. 2025) on tiny models of every family, and on the bundled model."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.icl.rank1 import (
    _last_states,
    absorb_context,
    applied,
    contextual_block,
    join_ids,
    rank1_update,
    verify_rank1,
    weight_matrix,
)
from lmscope.icl.trajectory import last_token_inputs, trajectory

CONTEXT = "the quick brown fox jumps over the lazy dog. "
QUERY = "hello world"


def test_identity_every_family(tiny: ls.Model) -> None:
    checks = verify_rank1(tiny, CONTEXT, QUERY)
    assert len(checks) == tiny.shape.n_layers
    for c in checks:
        assert c.rel_err_fp32 < 1e-5, (tiny.arch.name, c)
        assert c.rel_err_fp64 < 1e-12, (tiny.arch.name, c)
        if c.rel_err_no_update > 1e-3:  # the context changed this layer: a perturbed dW must fail (negative control)
            assert c.rel_err_perturbed > 1e-3, (tiny.arch.name, c)
            assert c.rel_err_perturbed > 1e3 * c.rel_err_fp32


def test_update_through_the_real_modules(tiny: ls.Model) -> None:
    """Oracle: the family's own first-matrix modules (Conv1D, fused gate_up...) run on A(C, x) and on A(x) with W + dW."""
    layer = tiny.shape.n_layers - 1
    block = contextual_block(tiny, layer)
    q, cq = join_ids(tiny, CONTEXT, QUERY)
    a = _last_states(tiny, q, [block.a_site])[block.a_site]
    a_ctx = _last_states(tiny, cq, [block.a_site])[block.a_site]
    upd = rank1_update(tiny, layer, CONTEXT, QUERY)
    with torch.no_grad():
        want = [m(a_ctx[None]) for _, m in block.first]
        with applied(tiny, [upd]):
            got = [m(a[None]) for _, m in block.first]
    for w, g in zip(want, got, strict=True):
        assert float((w - g).norm() / w.norm()) < 1e-5


def test_applied_restores_weights_bitwise_even_on_error(tiny_gpt2: ls.Model) -> None:
    upd = rank1_update(tiny_gpt2, 1, CONTEXT, QUERY)
    block = contextual_block(tiny_gpt2, 1)
    before = [m.weight.detach().clone() for _, m in block.first]
    with pytest.raises(RuntimeError, match="boom"):
        with applied(tiny_gpt2, [upd]):
            assert not torch.equal(block.first[0][1].weight, before[0])
            raise RuntimeError("boom")
    assert all(torch.equal(m.weight, b) for (_, m), b in zip(block.first, before, strict=True))


def test_conv1d_layout_is_out_by_in(tiny_gpt2: ls.Model) -> None:
    block = contextual_block(tiny_gpt2, 0)
    fc = block.first[0][1]
    x = torch.randn(1, tiny_gpt2.shape.d_model)
    assert torch.allclose(fc(x), x @ weight_matrix(fc).T + fc.bias, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3"])
def test_whole_model_absorption(family: str) -> None:
    model = ls.load_tiny(family)
    both = absorb_context(model, CONTEXT, QUERY)
    first = absorb_context(model, CONTEXT, QUERY, residual=False)
    assert both.kl_query_alone > 1e-4  # the context matters
    assert abs(both.kl_absorbed) < 1e-6 and both.top1_match
    assert torch.allclose(both.absorbed_logits, both.ctx_logits, atol=1e-4)
    assert first.kl_absorbed > 100 * abs(both.kl_absorbed)  # the skip term needs its own update
    assert len(both.updates) == 2 * model.shape.n_layers


def test_absorption_refuses_post_mlp_norm() -> None:
    with pytest.raises(NotImplementedError, match="norm follows the MLP"):
        absorb_context(ls.load_tiny("gemma2"), CONTEXT, QUERY)


def test_trajectory_against_unpadded_runs(tiny_llama: ls.Model) -> None:
    tr = trajectory(tiny_llama, CONTEXT, QUERY, layers=[0, 2], example_ends=[3, 7])
    assert tr.example_step_norm.shape == (2, 2)
    # the first demonstration's step is dW at its end (dW_0 = 0)
    assert torch.allclose(tr.example_step_norm[:, 0], tr.dw_norm[:, 3], atol=1e-6)
    # oracle: the final cumulative update equals the one-shot rank-1 update, computed from unpadded runs
    for j, layer in enumerate([0, 2]):
        assert abs(float(tr.dw_norm[j, -1]) - rank1_update(tiny_llama, layer, CONTEXT, QUERY).norm()) < 1e-4
        assert abs(float(tr.cos_to_final[j, -1]) - 1.0) < 1e-5
        assert float(tr.dw_norm[j, 0]) == 0.0
    # steps telescope: sum of steps >= final distance (triangle inequality)
    assert bool((tr.step_norm.sum(1) >= tr.dw_norm[:, -1] - 1e-5).all())
    q, cq = join_ids(tiny_llama, CONTEXT, QUERY)
    padded = last_token_inputs(tiny_llama, [q.tolist(), cq.tolist()], [2])
    alone = _last_states(tiny_llama, q, [ls.Site("mlp_in", 2)])[ls.Site("mlp_in", 2)]
    assert torch.allclose(padded[0, 0], alone, atol=1e-5)


def test_bad_input(tiny_llama: ls.Model) -> None:
    with pytest.raises(IndexError, match="n_layers"):
        contextual_block(tiny_llama, 99)
    with pytest.raises(ValueError, match="empty"):
        join_ids(tiny_llama, CONTEXT, "")


@pytest.mark.bundled
def test_identity_and_absorption_on_bundled(smollm: ls.Model) -> None:
    ctx = "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: fast\nA: slow\n\n"
    checks = verify_rank1(smollm, ctx, "Q: happy\nA:", layers=[0, 15, 29])
    assert max(c.rel_err_fp32 for c in checks) < 1e-5
    assert min(c.rel_err_perturbed for c in checks) > 1e-3
    ab = absorb_context(smollm, ctx, "Q: happy\nA:")
    assert ab.kl_query_alone > 0.1 and abs(ab.kl_absorbed) < 1e-3 and ab.top1_match
