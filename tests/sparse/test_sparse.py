"""Weight-sparse models, circuit pruning and bridges (lmscope.sparse): each test checks an independent oracle."""

from __future__ import annotations

import pytest
import torch

from lmscope.core import edits
from lmscope.core.hooks import active_hooks, capture, intervene
from lmscope.core.sites import Site
from lmscope.sparse.bridge import BridgeConfig, fit_bridge, fvu
from lmscope.sparse.model import (
    SparsityConfig,
    TrainConfig,
    abs_topk,
    activation_sparsity,
    density_at,
    k_for,
    load_model,
    new_model,
    save_model,
    sparse_parameters,
    topk_mask_,
    train,
)  # fmt: skip
from lmscope.sparse.prune import PruneConfig, learn_scores, prune_model, smallest_circuit
from lmscope.sparse.task import QuotePrompt, char_tokenizer, quote_loss, quote_prompts, quote_task

torch.set_num_threads(1)


@pytest.mark.parametrize("k", [1, 7, 40, 60])
def test_topk_mask_keeps_exactly_k_largest(k: int) -> None:
    w = torch.randn(6, 10)
    orig = w.clone()
    mask = topk_mask_(w, k)
    assert int((w != 0).sum()) == k == int(mask.sum())
    assert orig.abs()[mask].min() >= orig.abs()[~mask].max() if k < 60 else True
    assert torch.equal(w[mask], orig[mask])


def test_topk_mask_ties_still_keep_exactly_k() -> None:
    w = torch.ones(5, 5)
    topk_mask_(w, 9)
    assert int((w != 0).sum()) == 9
    with pytest.raises(ValueError, match="k must be"):
        topk_mask_(w, 0)


def test_anneal_schedule_monotone_to_target() -> None:
    cfg = SparsityConfig(target_density=0.02, anneal_frac=0.4)
    ds = [density_at(s, 1000, cfg) for s in range(1000)]
    assert all(a >= b for a, b in zip(ds, ds[1:], strict=False))
    assert ds[0] < 1.0 and ds[0] > 0.99
    assert ds[399] == pytest.approx(0.02) and ds[-1] == pytest.approx(0.02)
    assert ds[199] == pytest.approx(1 - 0.98 * 0.5)
    assert k_for(1000, 0.02) == 20 and k_for(10, 0.001) == 1


def test_abs_topk_matches_naive_reference() -> None:
    x = torch.randn(4, 7, 12)
    out = abs_topk(x, 3)
    ref = torch.zeros_like(x)
    for idx in torch.cartesian_prod(torch.arange(4), torch.arange(7)):
        row = x[idx[0], idx[1]]
        keep = sorted(range(12), key=lambda j: -abs(float(row[j])))[:3]
        ref[idx[0], idx[1], keep] = row[keep]
    assert torch.equal(out, ref)
    assert ((out != 0).sum(-1) == 3).all()


def test_sparsity_config_validates() -> None:
    with pytest.raises(ValueError, match="target_density"):
        SparsityConfig(target_density=0.0)
    with pytest.raises(ValueError, match="act_sites"):
        SparsityConfig(act_sites=("q",))


def test_char_tokenizer_round_trip() -> None:
    tok = char_tokenizer()
    text = "f('cat', \"dog\")\nx = 1"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text


@pytest.fixture(scope="module")
def trained():
    model = new_model(n_layer=2, d_model=32, n_head=2, seed=0)
    sp = SparsityConfig(target_density=0.1, anneal_frac=0.5)
    result = train(model, sp, TrainConfig(steps=30, batch=8, seq_len=24, lr=3e-3))
    return model, sp, result


def test_training_leaves_exactly_k_per_matrix(trained) -> None:
    model, sp, result = trained
    for name, p in sparse_parameters(model.hf, sp).items():
        assert int((p != 0).sum()) == k_for(p.numel(), 0.1), name
    assert result.density == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(result.densities, result.densities[1:], strict=False))
    assert result.losses[-1] < result.losses[0]


def test_core_capture_matches_hf_on_sparse_model(trained) -> None:
    model, sp, _ = trained
    batch = model.tokenize(["x = 'cat'", "print(\"dog\")"])
    sites = [Site("resid_post", layer) for layer in range(model.shape.n_layers)]
    with capture(model, sites) as acts:
        model(batch)
    hs = model.hf(**batch.model_inputs(), output_hidden_states=True).hidden_states
    assert torch.equal(acts[sites[0]], hs[1])
    assert torch.allclose(model.hf.transformer.ln_f(acts[sites[-1]]), hs[-1], atol=1e-6)
    # Inside activation sparsity the captured residual has exactly k nonzeros per position.
    with activation_sparsity(model, sp), capture(model, sites) as acts:
        model(batch)
    k = round(0.25 * model.shape.d_model)
    assert ((acts[sites[0]] != 0).sum(-1) == k).all()
    assert active_hooks(model) == []


def test_save_load_round_trip(trained, tmp_path) -> None:
    model, sp, _ = trained
    path = save_model(tmp_path / "m.safetensors", model, sp, note="x")
    loaded, sp2, meta = load_model(path)
    assert sp2 == sp and meta["note"] == "x"
    batch = model.tokenize(["d['key'] = 3"])
    with activation_sparsity(model, sp):
        a = model(batch)
    with activation_sparsity(loaded, sp2):
        b = loaded(batch)
    assert torch.equal(a, b)


def test_planted_pruning_recovers_subset() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 24, generator=gen) + 1.0
    planted = [3, 9, 17, 20]
    w = torch.tensor([1.0, -2.0, 0.5, 1.5])

    def loss(keep: torch.Tensor) -> torch.Tensor:
        xk = keep * x + (1 - keep) * x.mean(0)
        return (xk[:, planted] @ w - x[:, planted] @ w).pow(2).mean()

    scores = learn_scores(24, loss, PruneConfig(steps=300, penalty=0.05))
    keep = smallest_circuit(scores, lambda k: float(loss(k.float())), threshold=0.01)
    assert keep.nonzero().flatten().tolist() == planted
    with pytest.raises(ValueError, match="threshold"):
        smallest_circuit(scores, lambda k: 1.0, threshold=0.5)


def test_prune_model_reports_consistent_numbers(trained) -> None:
    model, sp, _ = trained
    task = quote_task(model, quote_prompts(16, seed=3))
    with activation_sparsity(model, sp):
        full_loss, _ = quote_loss(model(task.batch), task)
        res = prune_model(model, task.batch, lambda lg: quote_loss(lg, task), float(full_loss) + 0.05,
                          PruneConfig(steps=5))  # fmt: skip
    assert res.loss_full == pytest.approx(float(full_loss), abs=1e-5)  # all-ones mask is a no-op
    assert res.loss_sufficient <= float(full_loss) + 0.05 + 1e-6
    assert sum(res.per_site.values()) == res.circuit_nodes == int(res.keep.sum())
    assert res.n_nodes == 2 * (model.shape.d_mlp + model.shape.d_model)
    assert 0 <= res.circuit_weights <= res.total_weights


def test_mean_ablation_with_own_value_is_noop(trained) -> None:
    model, _, _ = trained
    batch = model.tokenize(["x = 'a'"])
    site = Site("mlp_post", 1)
    with capture(model, [site]) as acts:
        ref = model(batch)
    with intervene(model, {site: edits.custom(lambda x: acts[site])}):
        out = model(batch)
    assert torch.equal(ref, out)


def test_bridge_recovers_linear_map() -> None:
    gen = torch.Generator().manual_seed(0)
    n, d_s, d_d, k = 1024, 16, 24, 4
    sparse = torch.randn(n, d_s, generator=gen)
    sparse = abs_topk(sparse, k)  # k-sparse codes, as the sparse model's residual is
    basis = torch.randn(d_s, d_d, generator=gen)
    dense = sparse @ basis  # dense is an exact linear image of the sparse code, and vice versa (pinv)
    bridge = fit_bridge(dense, sparse, BridgeConfig(k_frac=k / d_s, steps=1500, lr=1e-2, kl_coef=0.0))
    with torch.no_grad():
        assert float(fvu(bridge.decode(sparse), dense)) < 0.02
        assert float(fvu(bridge.encode(dense), sparse)) < 0.05
        assert float(fvu(torch.zeros_like(sparse), sparse)) > 0.9  # the metric itself is not trivially small


def test_bridges_save_load_round_trip(tmp_path) -> None:
    from lmscope.sparse.bridge import Bridge, load_bridges, save_bridges

    bridges = [Bridge(6, 8, 2), Bridge(6, 8, 3)]
    path = save_bridges(tmp_path / "b.safetensors", bridges, BridgeConfig())
    loaded = load_bridges(path)
    x = torch.randn(5, 6)
    for a, b in zip(bridges, loaded, strict=True):
        assert b.k == a.k
        with torch.no_grad():
            assert torch.equal(a.encode(x), b.encode(x)) and torch.equal(a.decode(a.encode(x)), b.decode(a.encode(x)))


def test_quote_prompts_are_well_formed() -> None:
    for p in quote_prompts(50, seed=2):
        assert isinstance(p, QuotePrompt) and {p.answer, p.wrong} == {"'", '"'}
        last_line = p.text.split("\n")[-1]
        assert last_line.count(p.answer) % 2 == 1  # the string being closed is open


def test_train_bridges_runs_and_own_splice_is_free(trained) -> None:
    from lmscope.sparse.bridge import _resid, _spliced_kl, train_bridges
    from lmscope.sparse.task import lm_batches

    model, sp, _ = trained
    ids = lm_batches(1, 4, 16, seed=5)[0]
    resid, logits = _resid(model, sp, ids, 0)
    assert float(_spliced_kl(model, sp, ids, 0, resid, logits, False)) == pytest.approx(0.0, abs=1e-6)  # oracle: no-op splice
    dense = new_model(n_layer=2, d_model=24, n_head=2, seed=1)
    _, results = train_bridges(dense, SparsityConfig.dense(), model, sp, ids, ids, BridgeConfig(steps=3))
    assert [r.layer for r in results] == [0, 1]
    assert all(r.kl_mean_ablate_sparse > 0 and r.fvu_dense_to_sparse >= 0 for r in results)
    assert all(p.requires_grad for p in model.hf.parameters())  # models are unfrozen afterwards
