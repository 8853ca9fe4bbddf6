"""Training batch sources: every token once per epoch, the same batch for the same step, the model's own activations."""

from __future__ import annotations

from collections import Counter

import torch

import lmscope as ls
from lmscope.experiments.store import HarvestConfig, harvest
from lmscope.saes import ModelSource, StoreSource, TensorSource

SITE = "blocks.1.hook_resid_post"


def _rows(t: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(r.tolist()) for r in t)


def test_tensor_source_is_a_permutation_per_epoch() -> None:
    x = torch.arange(40.0).reshape(20, 2)
    src = TensorSource(x, seed=3)
    epoch = torch.cat([src.batch(i, 5) for i in range(4)])
    assert _rows(epoch) == _rows(x)
    assert torch.equal(TensorSource(x, seed=3).batch(2, 5), src.batch(2, 5))
    assert not torch.equal(src.batch(4, 5), src.batch(0, 5))  # a new permutation for epoch 1


def test_store_source_matches_the_store_and_restarts_exactly(tiny_llama: ls.Model, tmp_path) -> None:
    store = harvest(tiny_llama, HarvestConfig(sites=[SITE], n_tokens=620, seq_len=32, tokens_per_shard=124,
                                              progress=False), tmp_path)  # fmt: skip
    src = StoreSource(store, SITE, seed=1, shards_in_memory=2)
    per_epoch = len(store) // 100
    epoch = torch.cat([src.batch(i, 100) for i in range(per_epoch)])
    everything = store.load_all(SITE).float()
    # A multiset inclusion: no stored row is used twice in one epoch (the corpus repeats some windows).
    assert not Counter(_rows(epoch)) - Counter(_rows(everything)) and epoch.shape[0] == per_epoch * 100
    fresh = StoreSource(store, SITE, seed=1, shards_in_memory=2)
    assert torch.equal(fresh.batch(3, 100), src.batch(3, 100))  # a resumed run sees the same rows
    assert torch.equal(fresh.batch(per_epoch + 1, 100), StoreSource(store, SITE, seed=1, shards_in_memory=2).batch(
        per_epoch + 1, 100))  # fmt: skip


def test_model_source_yields_the_sites_activations(tiny_llama: ls.Model) -> None:
    chunks = torch.randint(0, 300, (4, 9), generator=torch.Generator().manual_seed(0))
    src = ModelSource(tiny_llama, SITE, chunks, buffer_chunks=4, batch_chunks=2, skip_first=1)
    got = torch.cat([src.batch(i, 8) for i in range(4)])
    with ls.capture(tiny_llama, [SITE]) as acts:
        tiny_llama(chunks)
    want = acts[SITE][:, 1:].reshape(-1, tiny_llama.shape.d_model)
    assert got.shape == want.shape
    assert torch.allclose(torch.tensor(_rows(got)), torch.tensor(_rows(want)), atol=1e-5)
    assert src.forward_passes == 2  # one buffer, filled once, stopping after the site
