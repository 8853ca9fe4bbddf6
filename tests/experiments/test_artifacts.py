"""RELIABILITY.md E20 and E24: artifacts round-trip bitwise with provenance; no pickle by default."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import lmscope as ls
from lmscope.core.sites import Site
from lmscope.experiments.artifacts import (
    Provenance,
    atomic_write_json,
    dataset_hash,
    load_artifact,
    save_artifact,
    sha256_file,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "vector": torch.randn(64, generator=g),
        "matrix": torch.randn(8, 64, generator=g),
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "ids": torch.arange(10),
        "flags": torch.tensor([True, False]),
        "tiny_values": torch.tensor([1e-38, -0.0, 3.4e38, 1.4e-45]),
    }


def test_e20_roundtrip_bitwise_with_provenance(tmp_path: Path, tiny_llama: ls.Model) -> None:
    tensors = _tensors()
    prompts = ["a", "b", "c"]
    prov = Provenance.of(tiny_llama, site=Site("resid_post", 1), layer=1, dataset=prompts, note="test")
    path = save_artifact(tmp_path / "sub" / "vec.safetensors", "steering_vector", tensors, meta={"scale": 4.0}, provenance=prov)
    art = load_artifact(path, "steering_vector")
    assert art.kind == "steering_vector" and art.meta == {"scale": 4.0}
    assert art.tensors.keys() == tensors.keys()
    for k, t in tensors.items():
        assert art.tensors[k].dtype == t.dtype and torch.equal(art.tensors[k], t), k
    assert torch.equal(art.tensors["tiny_values"].view(torch.int32), tensors["tiny_values"].view(torch.int32))  # -0.0 kept
    p = art.provenance
    assert p == prov
    assert p.model_id == tiny_llama.model_id and p.weight_hash == tiny_llama.weight_hash and len(p.weight_hash) == 64
    assert p.site == "blocks.1.hook_resid_post" and p.layer == 1
    assert p.dataset_hash == dataset_hash(prompts) and p.lmscope_version == ls.__version__
    assert p.extra == {"note": "test"}
    assert not list(path.parent.glob("*.tmp")), "atomic write left a temporary file"


def test_e20_tied_and_view_tensors_round_trip(tmp_path: Path) -> None:
    m = torch.randn(4, 3)
    tensors = {"m": m, "same": m, "row": m[1], "t": m.T, "slice": m[1:3]}
    art = load_artifact(save_artifact(tmp_path / "tied.safetensors", "tied", tensors))
    for k, t in tensors.items():
        assert torch.equal(art.tensors[k], t), k
    assert m.data_ptr() == tensors["m"].data_ptr()  # the caller's tensors are untouched


def test_e20_weight_hash_tracks_the_weights() -> None:
    a, b, c = ls.load_tiny("gpt2", seed=0), ls.load_tiny("gpt2", seed=0), ls.load_tiny("gpt2", seed=1)
    assert a.weight_hash == b.weight_hash != c.weight_hash


def test_dataset_hash_is_stable_and_order_sensitive() -> None:
    assert dataset_hash(["a", "b"]) == dataset_hash(["a", "b"]) != dataset_hash(["b", "a"])
    assert dataset_hash([{"x": 1, "y": 2}]) == dataset_hash([{"y": 2, "x": 1}])
    assert dataset_hash("text") == dataset_hash(b"text")


def test_kind_mismatch_and_foreign_files(tmp_path: Path) -> None:
    path = save_artifact(tmp_path / "a.safetensors", "lens", {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="'lens' artifact, expected 'sae'"):
        load_artifact(path, "sae")
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="foreign.safetensors.*no lmscope header"):
        load_artifact(tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_artifact(tmp_path / "a.pt", "lens", {"w": torch.ones(2)})


# ---- bad files: the error names the file -----------------------------------------------------------
def test_missing_truncated_corrupt_files_name_the_file(tmp_path: Path) -> None:
    good = save_artifact(tmp_path / "good.safetensors", "vector", {"v": torch.randn(1000)})
    raw = good.read_bytes()
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_artifact(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        load_artifact(truncated)
    header_cut = tmp_path / "headercut.safetensors"
    header_cut.write_bytes(raw[:20])
    with pytest.raises(ValueError, match="headercut.safetensors"):
        load_artifact(header_cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="garbage.safetensors"):
        load_artifact(garbage)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors"):
        load_artifact(empty)
    n = int.from_bytes(raw[:8], "little")
    bad_json = tmp_path / "badjson.safetensors"
    bad_json.write_bytes(raw[:8] + b"{" * n + raw[8 + n :])
    with pytest.raises(ValueError, match="badjson.safetensors"):
        load_artifact(bad_json)


def test_nan_tensors_are_refused_on_save(tmp_path: Path) -> None:
    v = torch.ones(10)
    v[[2, 5]] = float("nan")
    v[7] = float("inf")
    with pytest.raises(ValueError, match=r"'v'.*3 NaN/Inf"):
        save_artifact(tmp_path / "nan.safetensors", "vector", {"v": v})
    assert not (tmp_path / "nan.safetensors").exists()


# ---- E24 ------------------------------------------------------------------------------------------
def test_e24_pickle_refused_unless_allowed_then_weights_only(tmp_path: Path) -> None:
    t = {"w": torch.arange(4.0)}
    for suffix in (".pt", ".pkl", ".bin"):
        path = tmp_path / f"x{suffix}"
        torch.save(t, path)
        with pytest.raises(ValueError, match="allow_pickle"):
            load_artifact(path)
        art = load_artifact(path, allow_pickle=True)
        assert torch.equal(art.tensors["w"], t["w"])
    # A pickle that runs code on load is refused even with allow_pickle (weights_only=True).
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    with open(evil, "wb") as f:
        pickle.dump(_Evil(str(marker)), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_artifact(evil, allow_pickle=True)
    assert not marker.exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_e24_trust_remote_code_is_off_by_default() -> None:
    import inspect

    assert inspect.signature(ls.load).parameters["trust_remote_code"].default is False


def test_atomic_write_json(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "result.json"
    atomic_write_json(path, {"a": [1, 2], "b": Path("x")})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": "x"}
    assert not list(path.parent.glob("*.tmp"))
    assert len(sha256_file(path)) == 64
