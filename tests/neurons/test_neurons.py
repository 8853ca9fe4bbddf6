"""Neurons: statistics against naive references, labels, ablation and dose-response against hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmscope as ls
from lmscope.core import metrics
from lmscope.neurons import (
    ablate,
    auroc,
    correlate,
    dose_response,
    layer_reference,
    point_biserial,
    record,
    string_spans,
    string_windows,
    token_labels,
    top_examples,
)  # fmt: skip


def test_auroc_matches_pairwise_definition_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (150, 6), generator=g).float()
    y = torch.rand(150, generator=g) < 0.3
    p, q = x[y], x[~y]
    ref = ((p[:, None] > q[None]).double() + 0.5 * (p[:, None] == q[None]).double()).mean((0, 1))
    assert torch.allclose(auroc(x, y).double(), ref, atol=1e-6)
    with pytest.raises(ValueError, match="both classes"):
        auroc(x, torch.zeros(150, dtype=torch.bool))


def test_point_biserial_is_pearson_r() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=g)
    y = torch.rand(200, generator=g) < 0.4
    ref = [np.corrcoef(x[:, i].numpy(), y.numpy().astype(float))[0, 1] for i in range(4)]
    assert np.allclose(point_biserial(x, y).numpy(), ref, atol=1e-6)


def test_string_spans_and_token_labels() -> None:
    src = 'x = "ab"  # "no"\ny = r\'\'\'doc\'\'\' + f"{z}"\n'
    spans = string_spans(src)
    assert [src[a:b] for a, b in spans] == ["ab", "doc", "{z}"]
    assert [src[a:b] for a, b in string_spans(src, triple_quoted=False)] == ["ab", "{z}"]
    # tokens: 'x', ' "', 'ab', '"', '  #'
    offsets = [(0, 1), (3, 5), (5, 7), (7, 8), (8, 11)]
    assert token_labels(offsets, spans) == [False, False, True, False, False]


def test_string_windows_align_labels_with_tokens(tiny_llama: ls.Model) -> None:
    w = string_windows(tiny_llama.tokenizer, n_windows=3, seq_len=32, split="heldout")
    assert w.ids.shape == w.labels.shape == (3, 32)
    assert 0.0 < float(w.labels.float().mean()) < 1.0


def test_correlate_finds_a_planted_label_neuron(tiny_llama: ls.Model) -> None:
    """Label tokens by the sign of one neuron: correlate must rank that neuron first with AUROC 1."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (12, 16), generator=g)
    with ls.capture(tiny_llama, ["blocks.1.mlp.hook_post"]) as acts:
        tiny_llama(ids)
    labels = acts["blocks.1.mlp.hook_post"][..., 37] > 0
    res = correlate(tiny_llama, [0, 1], ids[:8], labels[:8], ids[8:], labels[8:], top=3)
    best = res.candidates[0]
    assert (best.layer, best.neuron) == (1, 37)
    assert best.train_auroc == 1.0 and best.heldout_auroc == 1.0


def test_mean_ablation_with_the_mean_itself_is_a_no_op(tiny_llama: ls.Model) -> None:
    ids = torch.randint(0, 300, (1, 2))
    mean, _ = layer_reference(tiny_llama, 1, ids, skip_first=1)  # the mean over one position: its own value
    clean = tiny_llama(ids)
    with ls.intervene(tiny_llama, {"blocks.1.mlp.hook_post": ls.edits.mean_ablate(mean[[4, 9]], index=[4, 9], positions=[1])}):
        out = tiny_llama(ids)
    assert torch.equal(out, clean)


def test_ablation_effects_match_hand_computation(tiny_llama: ls.Model) -> None:
    ids = torch.randint(0, 300, (3, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 4:] = True
    res = ablate(tiny_llama, 1, [5, 6], ids, modes=("zero",), score_mask=mask, n_controls=3, reference=ids)
    clean = tiny_llama(ids)
    with ls.intervene(tiny_llama, {"blocks.1.mlp.hook_post": ls.edits.zero(index=[5, 6])}):
        edited = tiny_llama(ids)
    m = mask.clone()
    m[:, -1] = False
    c, e = clean[m], edited[m]
    tgt = ids[:, 1:][m[:, :-1]]
    eff = res.effects["zero"]
    assert abs(eff.kl - float(metrics.kl_div(c, e).mean())) < 1e-6
    assert abs(eff.dlogp - float((metrics.token_logprob(e, tgt) - metrics.token_logprob(c, tgt)).mean())) < 1e-6
    assert eff.top1_change == float((c.argmax(-1) != e.argmax(-1)).float().mean())
    assert len(res.controls["zero"]) == 3 and all(5 not in s and 6 not in s for s in res.control_neurons)


def test_dose_response_at_multiplier_one_is_exactly_clean(tiny_llama: ls.Model) -> None:
    ids = torch.randint(0, 300, (2, 8))
    res = dose_response(tiny_llama, 0, [3], ids, values=(0.0, 1.0, 3.0), token_set=[1, 2], n_controls=1)
    at_one = res.effects[1]
    assert at_one.kl == 0.0 and at_one.dlogp == 0.0 and at_one.top1_change == 0.0
    assert res.effects[2].kl > 0.0
    with pytest.raises(ValueError, match="scale"):
        dose_response(tiny_llama, 0, [3], ids, mode="double")


def test_record_and_top_examples_match_brute_force(tiny_llama: ls.Model, tmp_path) -> None:
    store = record(tiny_llama, [1], tmp_path / "st", n_tokens=600, seq_len=32, progress=False)
    site = "blocks.1.mlp.hook_post"
    ex = top_examples(store, site, [7, 8], tokenizer=tiny_llama.tokenizer, k=4)
    col = store.load_all(site)[:, 7].float()
    assert [e.value for e in ex[7]] == col.topk(4).values.tolist()
    toks = store.tokens()["token_ids"]
    i = int(col.argmax())
    assert ex[7][0].token == tiny_llama.tokenizer.decode([int(toks[i])])
    assert "[[" in ex[7][0].highlighted()
    with pytest.raises(IndexError, match="layers"):
        record(tiny_llama, [9], tmp_path / "bad")
