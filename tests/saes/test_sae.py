"""SAE variants and training: naive references, planted dictionaries, exact resume."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope.saes import SAE, SAEConfig, TensorSource, TrainConfig, topk_codes, train_sae
from lmscope.saes.sae import _JumpReLU


def _naive_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    rows = []
    for r in pre:
        order = sorted(range(r.shape[0]), key=lambda i: -float(r[i].detach()))[:k]
        mask = torch.zeros_like(r)
        mask[order] = 1.0
        rows.append(torch.relu(r) * mask)
    return torch.stack(rows)


def test_topk_matches_naive_values_and_gradients() -> None:
    torch.manual_seed(0)
    pre = torch.randn(6, 20, dtype=torch.float64, requires_grad=True)
    pre_ref = pre.detach().clone().requires_grad_(True)
    out, ref = topk_codes(pre, 5), _naive_topk(pre_ref, 5)
    assert torch.equal(out, ref)
    w = torch.randn(6, 20, dtype=torch.float64)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.equal(pre.grad, pre_ref.grad)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.integers(1, 5), st.integers(0, 10_000))
def test_topk_code_has_at_most_k_nonzeros(k: int, rows: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig("topk", 6, 8, k=k), generator=g)
    z = sae.encode(torch.randn(rows, 6, generator=g))
    assert int((z != 0).sum(-1).max()) <= k
    assert bool((z >= 0).all())


@settings(max_examples=25, deadline=None)
@given(st.floats(0.01, 2.0), st.integers(0, 10_000))
def test_jumprelu_is_zero_below_threshold(theta: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig("jumprelu", 6, 10, initial_threshold=theta), generator=g)
    pre = sae.pre_acts(torch.randn(7, 6, generator=g) * 3)
    z = sae.encode(torch.randn(7, 6, generator=g) * 3)
    z = sae.activate(pre)
    assert torch.equal(z, torch.where(pre > theta, pre, torch.zeros_like(pre)))


def test_jumprelu_straight_through_gradient_matches_formula() -> None:
    x = torch.tensor([[0.10, 0.52, 0.49, 0.90]], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64, requires_grad=True)
    eps = 0.1
    _JumpReLU.apply(x, theta, eps).sum().backward()
    # d/dx = H(x - theta); d/dtheta = -(theta/eps) * rect((x - theta)/eps): only |x - theta| < eps/2 contributes.
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 0.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(theta.grad, torch.tensor([0.0, -5.0, -5.0, 0.0], dtype=torch.float64))


def test_batchtopk_keeps_k_per_row_on_average_while_training() -> None:
    sae = SAE(SAEConfig("batchtopk", 6, 16, k=3), generator=torch.Generator().manual_seed(0))
    sae.train()
    z = sae.encode(torch.randn(10, 6))
    assert int((z > 0).sum()) <= 30


def _planted(n: int = 16_000, d: int = 32, atoms: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    active = torch.rand(n, atoms, generator=g) < 3 / atoms
    codes = active * (0.5 + torch.rand(n, atoms, generator=g) * 2)
    return codes @ dictionary, dictionary


@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_planted_sparse_dictionary_is_recovered(arch: str) -> None:
    x, dictionary = _planted()
    cfg = SAEConfig(arch, 32, 192, k=4, l1_coeff=0.05)
    res = train_sae(TensorSource(x), cfg, TrainConfig(total_tokens=16_000 * 5, batch_size=256, lr=3e-3, progress=False,
                                                       dead_tokens=10_000))  # fmt: skip
    w = res.sae.W_dec / res.sae.W_dec.norm(dim=-1, keepdim=True)
    best = (dictionary @ w.T).max(-1).values
    assert float((best > 0.9).float().mean()) >= 0.9, best.sort().values[:10]


def _jumprelu_l0(x: torch.Tensor, l0_coeff: float, threshold_lr: float | None) -> float:
    cfg = SAEConfig("jumprelu", 32, 192, l0_coeff=l0_coeff, normalize_activations="expected_average_only_in")
    res = train_sae(TensorSource(x, seed=0), cfg, TrainConfig(total_tokens=256 * 256, batch_size=256, progress=False,
                                                              threshold_lr=threshold_lr, log_every=16))  # fmt: skip
    return sum(r["l0"] for r in res.log[-4:]) / 4


def test_the_jumprelu_l0_coefficient_sets_the_sparsity_only_with_a_threshold_learning_rate() -> None:
    """In a short run Adam moves each log-threshold by about ``lr`` per step whatever the coefficient:
    at the shared rate a 100x larger L0 coefficient leaves L0 where it was; with a threshold rate it orders L0."""
    x, _ = _planted()
    shared = [_jumprelu_l0(x, c, None) for c in (0.1, 10.0)]
    assert abs(shared[0] - shared[1]) <= 0.05 * shared[0], shared
    own = [_jumprelu_l0(x, c, 0.03) for c in (0.1, 1.0, 10.0)]
    assert own[0] > own[1] > own[2] and own[0] >= 1.5 * own[2], own
    assert own[0] < shared[0] / 2, (own, shared)  # the thresholds moved away from their start


def test_train_config_refuses_non_positive_learning_rates() -> None:
    for kw in ({"lr": 0.0}, {"threshold_lr": -1e-3}):
        with pytest.raises(ValueError, match="learning rates must be positive"):
            TrainConfig(total_tokens=1024, **kw)


def _state(res) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in res.sae.state_dict().items()}


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "jumprelu-threshold-lr", "batchtopk"])
def test_resume_reproduces_uninterrupted_run_bitwise(arch: str, tmp_path) -> None:
    x, _ = _planted(n=3000, d=16, atoms=40)
    arch, threshold_lr = ("jumprelu", 0.02) if arch == "jumprelu-threshold-lr" else (arch, None)
    cfg = SAEConfig(arch, 16, 128, k=2, normalize_activations="expected_average_only_in")
    tcfg = TrainConfig(total_tokens=128 * 20, batch_size=128, lr=1e-3, warmup_steps=5, checkpoint_every=4,
                       dead_tokens=128, progress=False, init_tokens=256, log_every=1, threshold_lr=threshold_lr)  # fmt: skip
    full = train_sae(TensorSource(x, seed=1), cfg, tcfg, out_dir=tmp_path / "a")
    part = train_sae(TensorSource(x, seed=1), cfg, tcfg, out_dir=tmp_path / "b", stop_after=9)
    assert part.steps == 9
    rest = train_sae(TensorSource(x, seed=1), cfg, tcfg, out_dir=tmp_path / "b")
    assert rest.resumed_from == 9 and rest.steps == 20
    a, b = _state(full), _state(rest)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.sae.cfg.scaling_factor == rest.sae.cfg.scaling_factor
    assert [r["mse"] for r in full.log] == [r["mse"] for r in rest.log]
    if arch != "jumprelu":
        assert any(r["aux"] > 0 for r in full.log)  # the AuxK path ran


def test_resume_refuses_a_different_shape(tmp_path) -> None:
    x = torch.randn(600, 8)
    tcfg = TrainConfig(total_tokens=640, batch_size=64, checkpoint_every=2, progress=False, init_tokens=64)
    train_sae(TensorSource(x), SAEConfig("topk", 8, 16, k=2), tcfg, out_dir=tmp_path, stop_after=4)
    with pytest.raises(ValueError, match="config.sae.d_sae was"):
        train_sae(TensorSource(x), SAEConfig("topk", 8, 32, k=2), tcfg, out_dir=tmp_path)


def test_config_refuses_unknown_architecture_and_missing_k() -> None:
    with pytest.raises(ValueError, match="supported"):
        SAEConfig("gated", 8, 16)
    with pytest.raises(ValueError, match="k"):
        SAEConfig("topk", 8, 16)
    with pytest.raises(ValueError, match="width d_in=8"):
        SAE(SAEConfig("standard", 8, 16)).encode(torch.zeros(2, 9))


def test_decoder_rows_stay_unit_norm_during_training() -> None:
    res = train_sae(TensorSource(torch.randn(512, 8) * 4), SAEConfig("standard", 8, 16),
                    TrainConfig(total_tokens=1024, batch_size=64, lr=1e-2, progress=False, init_tokens=64))  # fmt: skip
    assert torch.allclose(res.sae.W_dec.norm(dim=-1), torch.ones(16), atol=1e-5)


def test_topk_training_forward_by_gather_equals_the_dense_product() -> None:
    gen = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig("topk", 16, 64, k=5, aux_k=8), generator=gen)
    x = torch.randn(32, 16, generator=gen)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    out = sae(x, dead_mask=dead)
    out.loss.backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    sae.zero_grad()
    # the dense reference: the activation rule, then a full (batch, d_sae) @ (d_sae, d_in) product
    pre = sae.pre_acts(x)
    z = sae.activate(pre)
    xs = x * sae.cfg.scaling_factor
    err = z @ sae.W_dec + sae.b_dec - xs
    masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
    vals, idx = masked.topk(8, dim=-1, sorted=False)
    resid = -err.detach()
    e_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ sae.W_dec
    aux = sae.cfg.aux_coeff * min(int(dead.sum()) / 8, 1.0) * (e_hat - resid).pow(2).sum() / (resid - resid.mean(0)).pow(2).sum()
    loss = err.pow(2).sum(-1).mean() + aux
    loss.backward()
    assert torch.allclose(out.latents, z, atol=1e-6) and torch.allclose(out.loss, loss, atol=1e-5)
    for name, g in fast.items():
        assert torch.allclose(g, dict(sae.named_parameters())[name].grad, atol=1e-5), name


def test_positive_quantiles_match_torch_quantile_column_by_column() -> None:
    from lmscope.saes.features import QUANTILES, positive_quantiles

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(500, 40, generator=gen).relu() * (torch.rand(500, 40, generator=gen) < 0.1)
    z[:, 3] = 0.0  # a dead column
    z[:, 4] = 0.0
    z[7, 4] = 1.5  # a column with one positive entry
    probs = torch.tensor(QUANTILES)
    got = positive_quantiles(z, probs)
    for j in range(z.shape[1]):
        col = z[:, j][z[:, j] > 0]
        want = torch.quantile(col, probs) if col.numel() else torch.zeros(len(probs))
        assert torch.allclose(got[j], want, atol=1e-5), j
    assert torch.equal(positive_quantiles(torch.zeros(5, 3), probs), torch.zeros(3, len(probs)))


def test_kept_codes_are_the_sample_codes() -> None:
    from lmscope.saes.features import latent_stats, sample_codes

    gen = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig("topk", 8, 32, k=3), generator=gen)
    acts, ids = torch.randn(60, 8, generator=gen), torch.randint(0, 9, (6, 10), generator=gen)
    kept = latent_stats(sae, acts, ids, block=16, keep_codes=True)
    plain = latent_stats(sae, acts, ids, block=16)
    assert plain.codes is None and kept.codes is not None
    assert torch.allclose(sample_codes(sae, kept), sample_codes(sae, plain), atol=1e-6)
    assert torch.allclose(kept.quantiles, plain.quantiles)
