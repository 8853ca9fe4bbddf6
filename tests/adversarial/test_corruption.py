"""Corrupted files: every artifact and manifest is checked, and the error names the file."""

from __future__ import annotations

import json
import random

import pytest
import torch

import lmscope as ls
from lmscope.experiments.artifacts import load_artifact, save_artifact
from lmscope.experiments.store import ActivationStore, HarvestConfig, harvest
from lmscope.lenses.tuned_lens import TunedLens
from lmscope.saes import SAE, SAEConfig
from lmscope.steering.vector import SteeringVector


def _flip_one_bit(path, rng: random.Random, *, skip_header: bool = False) -> None:
    raw = bytearray(path.read_bytes())
    lo = 8 + int.from_bytes(raw[:8], "little") if skip_header else 8
    i = rng.randrange(lo, len(raw))
    raw[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(raw))


def _artifacts(tmp_path, model: ls.Model):
    d = model.shape.d_model
    vec = SteeringVector({1: torch.randn(d), 2: torch.randn(d)}, d)
    yield "steering vector", vec.save(tmp_path / "v.safetensors"), SteeringVector.load
    lens = TunedLens.identity(model)
    yield "tuned lens", lens.save(tmp_path / "lens.safetensors", model), TunedLens.load
    yield "artifact", save_artifact(tmp_path / "a.safetensors", "thing", {"w": torch.randn(50)}), load_artifact


@pytest.mark.parametrize("seed", range(6))
def test_a_flipped_bit_in_any_artifact_is_an_error(tiny_llama: ls.Model, tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    for _what, path, load in _artifacts(tmp_path, tiny_llama):
        _flip_one_bit(path, rng, skip_header=seed % 2 == 0)  # in the tensor bytes, or anywhere
        with pytest.raises(ValueError, match=str(path.name)):
            load(path)


def test_an_sae_file_with_a_flipped_bit_is_an_error(tmp_path) -> None:
    from lmscope.saes.interop import load_saelens, save_saelens

    sae = SAE(SAEConfig("topk", 8, 16, k=2, hook_name="blocks.0.hook_resid_post"), generator=torch.Generator().manual_seed(0))
    folder = save_saelens(sae.eval(), tmp_path / "sae")
    _flip_one_bit(folder / "sae_weights.safetensors", random.Random(1), skip_header=True)
    with pytest.raises(ValueError, match="checksum|corrupt"):
        load_saelens(folder)


@pytest.fixture()
def store(tiny_llama: ls.Model, tmp_path) -> ActivationStore:
    cfg = HarvestConfig(sites=["blocks.1.hook_resid_post"], n_tokens=90, seq_len=16, tokens_per_shard=30, progress=False)
    return harvest(tiny_llama, cfg, tmp_path / "store")


def _edit_manifest(store: ActivationStore, change) -> None:
    path = store.path / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_a_trimmed_manifest_is_refused(store: ActivationStore) -> None:
    _edit_manifest(store, lambda m: m["shards"].pop())
    with pytest.raises(ValueError, match="checksum|disagree|complete"):
        ActivationStore(store.path)


def test_a_manifest_pointing_outside_its_folder_is_refused(store: ActivationStore, tmp_path) -> None:
    def escape(m):
        m["shards"][0]["files"]["blocks.1.hook_resid_post"]["file"] = "../../outside.safetensors"

    _edit_manifest(store, escape)
    with pytest.raises(ValueError, match="checksum|outside"):
        ActivationStore(store.path)


def test_a_broken_manifest_names_the_file(store: ActivationStore) -> None:
    (store.path / "manifest.json").write_text('{"format": "lmscope.activation_store", "shards": [')
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        ActivationStore(store.path)
    (store.path / "manifest.json").write_text('{"format": "lmscope.activation_store"}')
    with pytest.raises(ValueError, match="lacks"):
        ActivationStore(store.path)


def test_a_corrupt_shard_is_found_before_training_starts(store: ActivationStore) -> None:
    shard = store.path / store.shards[-1]["files"]["blocks.1.hook_resid_post"]["file"]
    _flip_one_bit(shard, random.Random(3), skip_header=True)
    with pytest.raises(ValueError, match="checksum mismatch"):
        ActivationStore(store.path)  # opening verifies every shard, so training never begins on a bad store
