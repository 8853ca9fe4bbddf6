"""Tuned lens: identity == logit lens; training beats the logit lens; checkpoints resume exactly."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import lmscope as ls
from lmscope.lenses import logit_lens
from lmscope.lenses.compare import compare_lenses
from lmscope.lenses.tuned_lens import _KL, CHECKPOINT, FINAL, TunedLens, TunedLensConfig, train_tuned_lens

SMALL = TunedLensConfig(train_tokens=6 * 2 * 32, seq_len=32, batch_size=2, lr=1e-2, warmup_steps=1, checkpoint_every=2)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_identity_translators_equal_logit_lens(family: str) -> None:
    model = ls.load_tiny(family)
    prompts = ["hello world", "The capital of France is"]
    ref = logit_lens(model, prompts, target=" the", k=4)
    got = TunedLens.identity(model).lens(model, prompts, target=" the", k=4)
    for name in ("top_ids", "top_probs", "entropy", "kl_to_final", "target_rank", "target_prob"):
        assert torch.equal(getattr(ref, name), getattr(got, name)), name
    assert got.lens == "tuned"


def test_training_beats_logit_lens_on_heldout_and_restores_grads(tiny_llama: ls.Model) -> None:
    before = [p.requires_grad for p in tiny_llama.hf.parameters()]
    lens = train_tuned_lens(tiny_llama, SMALL, progress=False)
    assert [p.requires_grad for p in tiny_llama.hf.parameters()] == before
    assert all(p.grad is None for p in tiny_llama.hf.parameters())
    cmp = compare_lenses(tiny_llama, lens, n_windows=4, seq_len=32, progress=False)
    last = tiny_llama.shape.n_layers - 1
    assert cmp.tuned_beats_logit()[:last] == [True] * last, cmp.kl
    assert cmp.kl["tuned"][last] == cmp.kl["logit"][last]  # the last translator stays the identity
    assert cmp.kl["logit"][last] < 1e-5


def test_checkpoint_resume_equals_uninterrupted_and_artifact_round_trips(tiny_llama: ls.Model, tmp_path) -> None:
    straight = train_tuned_lens(tiny_llama, SMALL, out=tmp_path / "a", progress=False)
    first = train_tuned_lens(tiny_llama, SMALL, out=tmp_path / "b", progress=False, stop_after=3)
    assert (tmp_path / "b" / CHECKPOINT).is_file() and not (tmp_path / "b" / FINAL).exists()
    assert not torch.equal(first.weight, straight.weight)
    resumed = train_tuned_lens(tiny_llama, SMALL, out=tmp_path / "b", progress=False)
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)
    assert resumed.meta["train_losses"] == straight.meta["train_losses"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same model: no provenance warning
        loaded = TunedLens.load(tmp_path / "b" / FINAL, tiny_llama)
    assert torch.equal(loaded.weight, straight.weight) and torch.equal(loaded.bias, straight.bias)
    prov = loaded.meta["provenance"]
    assert prov["weight_hash"] == tiny_llama.weight_hash and prov["site"] == "resid_post" and prov["dataset_hash"]
    with pytest.raises(ValueError, match="config.lr was 0.01, now 0.5"):
        train_tuned_lens(tiny_llama, TunedLensConfig(**{**SMALL.__dict__, "lr": 0.5}), out=tmp_path / "b", progress=False)
    with pytest.warns(UserWarning, match="other weights"):
        TunedLens.load(tmp_path / "b" / FINAL, ls.load_tiny("llama", seed=1))
    with pytest.raises(ValueError, match="layers"):
        TunedLens.load(tmp_path / "b" / FINAL, ls.load_tiny("gpt2", config_overrides={"n_layer": 2}))


def test_sampled_kl_estimates_exact_kl() -> None:
    gen = torch.Generator().manual_seed(0)
    vocab, d = 5000, 16
    w = torch.randn(vocab, d, generator=gen)
    target = (torch.randn(3, 7, vocab, generator=gen) * 4).log_softmax(-1)
    x = torch.randn(3, 7, d, generator=gen)
    logq = (x @ w.T).log_softmax(-1)
    exact = float((target.exp() * (target - logq)).sum(-1).mean())
    cfg = TunedLensConfig(train_tokens=64, seq_len=8, batch_size=1, sampled_vocab=2500, target_top=200)
    est = float(_KL(target, w, cfg, step=0)(_Stub(), x, torch.nn.Identity()))
    exact_cfg = TunedLensConfig(train_tokens=64, seq_len=8, batch_size=1, sampled_vocab=None)
    full = float(_KL(target, w, exact_cfg, 0)(_Stub(), x, torch.nn.Identity()))
    assert math.isclose(full, exact, rel_tol=1e-5)
    assert abs(est - exact) < 0.1 * exact, (est, exact)


class _Stub:
    class hf:  # noqa: N801 - mimics Model.hf.config
        config = object()


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="train_tokens"):
        TunedLensConfig(train_tokens=10, seq_len=32, batch_size=2)
    with pytest.raises(ValueError, match="skip_first"):
        TunedLensConfig(seq_len=4, skip_first=5)


@pytest.mark.bundled
def test_bundled_short_training_beats_logit_lens_at_a_middle_layer(smollm: ls.Model) -> None:
    cfg = TunedLensConfig(train_tokens=4 * 2 * 32, seq_len=32, batch_size=2, lr=1e-3, warmup_steps=1, layers=(14,))
    lens = train_tuned_lens(smollm, cfg, progress=False)
    cmp = compare_lenses(smollm, lens, n_windows=2, seq_len=32, progress=False)
    assert cmp.kl["tuned"][14] < cmp.kl["logit"][14]
    untouched = [i for i in range(smollm.shape.n_layers) if i != 14]
    assert all(cmp.kl["tuned"][i] == cmp.kl["logit"][i] for i in untouched)
