"""Metrics against independent references: HF's own loss, torch.nn.functional, explicit loops."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import lmscope as ls
from lmscope.core import metrics

from ._util import PROMPTS


def _logits(seed: int = 0, b: int = 3, v: int = 11) -> torch.Tensor:
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_token_metrics_by_hand() -> None:
    x = _logits()
    tok = [2, 5, 7]
    for i, t in enumerate(tok):
        p = math.exp(x[i, t]) / sum(math.exp(v) for v in x[i].tolist())
        assert abs(metrics.token_prob(x, tok)[i].item() - p) <= 1e-6
        assert abs(metrics.token_logprob(x, tok)[i].item() - math.log(p)) <= 1e-5
        assert metrics.token_rank(x, tok)[i].item() == sorted(x[i].tolist(), reverse=True).index(x[i, t].item())
        assert metrics.logit_diff(x, tok, 0)[i].item() == (x[i, t] - x[i, 0]).item()
    assert metrics.token_rank(x, x.argmax(-1)).eq(0).all()


def test_kl_and_entropy_against_torch() -> None:
    p, q = _logits(0), _logits(1)
    ref = F.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(metrics.kl_div(p, q), ref, atol=1e-6)
    assert metrics.kl_div(p, p).abs().max() <= 1e-6
    ent = torch.distributions.Categorical(logits=p).entropy()
    assert torch.allclose(metrics.entropy(p), ent, atol=1e-5)
    assert abs(metrics.entropy(torch.zeros(1, 8)).item() - math.log(8)) <= 1e-6


def test_cross_entropy_equals_hf_loss(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    for p in PROMPTS:
        batch = model.tokenize(p)
        with torch.no_grad():
            hf_loss = model.hf(**batch.model_inputs(), labels=batch.input_ids).loss
        ours = metrics.cross_entropy(model(batch), batch.input_ids, batch.attention_mask)
        assert abs(ours.item() - hf_loss.item()) <= 1e-5
    # A right-padded batch: padding is excluded (token-weighted mean over the real tokens).
    batch = model.tokenize(PROMPTS, padding_side="right")
    total, count = 0.0, 0
    for p in PROMPTS:
        single = model.tokenize(p)
        n = single.shape[1] - 1
        total += metrics.cross_entropy(model(single), single.input_ids).item() * n
        count += n
    assert abs(metrics.cross_entropy(model(batch), batch.input_ids, batch.attention_mask).item() - total / count) <= 1e-5


def test_at_last_picks_the_last_real_token(tiny_gpt2: ls.Model) -> None:
    for side in ("left", "right"):
        batch = tiny_gpt2.tokenize(PROMPTS, padding_side=side)
        last = metrics.at_last(tiny_gpt2(batch), batch.attention_mask)
        for i, p in enumerate(PROMPTS):
            assert (last[i] - tiny_gpt2(p)[0, -1]).abs().max() <= 1e-5


def test_normalized() -> None:
    assert metrics.normalized(torch.tensor(3.0), clean=5.0, corrupt=1.0).item() == 0.5
