"""Extraction: a planted direction is recovered by mean difference, PCA and the probe."""

from __future__ import annotations

import pytest
import torch

from lmscope.steering import extract_many, from_records, last_token_acts, threshold_accuracy
from lmscope.steering.extract import directions_from_acts, mean_diff_directions


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("method", ["mean_diff", "pca", "probe"])
def test_synthetic_planted_direction(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    n, layers, d = 100, 2, 32
    planted = torch.randn(d, generator=g)
    planted /= planted.norm()
    noise = lambda: torch.randn(n, layers, d, generator=g)  # noqa: E731
    pos, neg = noise() + 2.0 * planted, noise() - 2.0 * planted
    dirs = directions_from_acts(pos, neg, method, paired=True)
    for layer in range(layers):
        assert _cos(dirs[layer], planted) > 0.9
        # gap-scaled: the length is the projected class gap (~4), positive side up
        assert 3.0 < float(dirs[layer] @ planted) < 5.0


def test_mean_diff_is_difference_of_means() -> None:
    pos, neg = torch.randn(5, 3, 4), torch.randn(7, 3, 4)
    assert torch.equal(mean_diff_directions(pos, neg), pos.mean(0) - neg.mean(0))


def test_threshold_accuracy_oracle() -> None:
    tp, tn = torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])
    assert threshold_accuracy(tp, tn, torch.tensor([2.5, 0.5]), torch.tensor([0.7, 3.0])) == 0.5
    assert threshold_accuracy(tp, tn, torch.tensor([5.0]), torch.tensor([-5.0])) == 1.0


def test_last_token_acts_match_single_prompt_runs(tiny_llama) -> None:
    """Left-padded batches read each row's last real token: compare with unpadded HF hidden states."""
    m = tiny_llama
    texts = ["hello", "the quick brown fox jumps"]
    acts = last_token_acts(m, texts, templated=False, batch_size=2)
    for i, t in enumerate(texts):
        ids = m.tokenizer(t, return_tensors="pt")["input_ids"]
        hs = m.hf(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(m.shape.n_layers - 1):
            assert torch.allclose(acts[i, layer], hs[layer + 1][0, -1], atol=1e-5)


def test_planted_direction_in_a_tiny_model(tiny_llama) -> None:
    """Positives end in token A, negatives in token B; the embeddings of A and B differ by a planted
    direction, so the last-token activations do too. All three methods must find it."""
    m = tiny_llama
    tok = m.tokenizer
    a_id, b_id = tok("A", add_special_tokens=False)["input_ids"], tok("B", add_special_tokens=False)["input_ids"]
    assert len(a_id) == len(b_id) == 1
    emb = m.hf.get_input_embeddings().weight
    g = torch.Generator().manual_seed(3)
    planted = torch.randn(m.shape.d_model, generator=g)
    planted /= planted.norm()
    saved = emb.data.clone()
    try:
        base = emb.data[a_id[0]].clone()
        emb.data[a_id[0]] = base + planted
        emb.data[b_id[0]] = base - planted
        words = "the quick brown fox jumps over lazy dog hello world capital France Paris Mary John store".split()
        rng = torch.Generator().manual_seed(4)
        records = []
        for i in range(48):
            stem = " ".join(words[j] for j in torch.randint(0, len(words), (4,), generator=rng).tolist())
            records.append({"positive": stem + " A", "negative": stem + " B", "split": "test" if i % 4 == 0 else "train"})
        cs = from_records(records, name="planted")
        res = extract_many(m, cs, layers=[0, 1], shuffled=True)
        for method, r in res.items():
            assert _cos(r.vector[0], planted) > 0.9, method
            assert r.separability[0] == 1.0, method
            # the same estimator on shuffled train labels reads nothing of the planted contrast
            assert sorted(r.control) == [0, 1] and max(r.control.values()) <= 0.8, (method, r.control)
            assert r.chosen_layer() in (0, 1) and r.train_acc[r.chosen_layer()] == max(r.train_acc.values())
    finally:
        emb.data.copy_(saved)


def test_shuffled_labels_keep_sizes_and_pairs() -> None:
    from lmscope.steering.extract import _shuffle_labels

    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(40, 2, 3, generator=g), torch.randn(40, 2, 3, generator=g)
    sp, sn = _shuffle_labels(pos, neg, paired=True, seed=0)
    swapped = torch.tensor([torch.equal(sp[i], neg[i]) and torch.equal(sn[i], pos[i]) for i in range(40)])
    kept = torch.tensor([torch.equal(sp[i], pos[i]) and torch.equal(sn[i], neg[i]) for i in range(40)])
    assert bool((swapped | kept).all()) and int(swapped.sum()) == 20  # exactly half: no share of the contrast left
    up, un = _shuffle_labels(pos[:30], neg, paired=False, seed=0)
    assert up.shape[0] == 30 and un.shape[0] == 40
    true_pos = {tuple(r.flatten().tolist()) for r in pos[:30]}
    share = [sum(tuple(r.flatten().tolist()) in true_pos for r in side) / len(side) for side in (up, un)]
    assert abs(share[0] - share[1]) < 0.05, share  # both sides hold true positives at the overall rate (30/70)
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([pos[:30], neg])}
    assert {tuple(r.flatten().tolist()) for r in torch.cat([up, un])} == rows


def test_the_shuffled_control_is_at_chance_even_for_a_strong_contrast() -> None:
    """A coin flip per pair would leave (1 - 2f) of the true difference: with a strong contrast the
    control then lands near 0 or 1 depending on the seed. The balanced shuffle stays near chance."""
    from lmscope.steering.extract import _layer_accuracies, _shuffle_labels, directions_from_acts

    g = torch.Generator().manual_seed(7)
    d, n = 256, 60
    u = torch.zeros(d)
    u[0] = 1.0
    def side(sign: float, m: int) -> torch.Tensor:
        return (sign * 3.0 * u + torch.randn(m, d, generator=g))[:, None, :]  # (m, layer=1, d)
    tp, tn, ep, en = side(1, n), side(-1, n), side(1, 200), side(-1, 200)
    for paired in (True, False):
        for seed in range(6):
            sp, sn = _shuffle_labels(tp, tn if paired else tn[:45], paired, seed)
            null = directions_from_acts(sp, sn, "mean_diff", paired=paired)
            control, _ = _layer_accuracies(null, [0], sp, sn, ep, en)
            assert 0.3 < control[0] < 0.7, (paired, seed, control)
