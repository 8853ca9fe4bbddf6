"""A model split across devices by accelerate (here: CPU plus disk offload, which runs the same dispatch hooks a
multi-GPU split does) captures, intervenes, patches and generates exactly like the unsplit model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lmscope as ls
from lmscope import circuits as C
from lmscope.core import edits
from lmscope.core.access import get_module
from lmscope.core.inputs import Batch
from lmscope.core.sites import Site

FAMILIES = ["llama", "gpt2", "gemma3", "qwen2", "gpt_neox"]


def _split_map(model: ls.Model, disk_from: int) -> dict[str, str]:
    """Layers below ``disk_from`` (and the embedding) on the CPU; later layers, the final norm and the head on disk."""
    layers = model.arch.layers
    base = layers.rsplit(".", 1)[0]
    out: dict[str, str] = {}
    for name, _ in get_module(model.hf, base).named_children():
        full = f"{base}.{name}"
        if full != layers:
            out[full] = "cpu" if "emb" in name or "rotary" in name or name in ("wte", "wpe") else "disk"
    for i in range(model.shape.n_layers):
        out[f"{layers}.{i}"] = "cpu" if i < disk_from else "disk"
    tied = model.hf.config.tie_word_embeddings
    for name, _ in model.hf.named_children():
        if name != base.split(".")[0]:
            out[name] = "cpu" if tied else "disk"  # tied weights stay with the embedding (load() checks)
    return out


@pytest.fixture(scope="module", params=[f for f in FAMILIES if f in ls.TINY_FAMILIES])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[ls.Model, ls.Model]:
    """(unsplit, split) copies of one tiny model: the split one has its upper layers offloaded to disk."""
    whole = ls.load_tiny(request.param, attn_implementation="eager")
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    whole.hf.save_pretrained(folder)
    whole.tokenizer.save_pretrained(folder)
    split = ls.load(folder, device_map=_split_map(whole, disk_from=1), offload_folder=folder / "offload",
                    attn_implementation="eager")  # fmt: skip
    assert split.offloaded, "the map should have put some weights on disk"
    return whole, split


def _sites(model: ls.Model) -> list[Site]:
    kinds = ["embed", "resid_pre", "resid_post", "attn_out", "mlp_out", "attn_z", "mlp_post", "attn_pattern", "logits"]
    return [s for s in model.sites(kinds)]


def test_the_split_model_has_the_same_weights_and_input_device(pair: tuple[ls.Model, ls.Model]) -> None:
    whole, split = pair
    assert split.weight_hash == whole.weight_hash
    assert split.device == torch.device("cpu")
    assert any(hasattr(m, "_hf_hook") for m in split.hf.modules())


def test_capture_is_bitwise_equal(pair: tuple[ls.Model, ls.Model]) -> None:
    whole, split = pair
    batch = whole.tokenize(["the dog saw Mary", "a fox ran"])
    sites = _sites(whole)
    with ls.capture(whole, sites) as a:
        ref = whole(batch)
    with ls.capture(split, sites) as b:
        got = split(batch)
    assert torch.equal(ref, got)
    for s in sites:
        assert torch.equal(a[s], b[s]), s
    assert ls.active_hooks(split) == []


def test_interventions_and_patching_are_bitwise_equal(pair: tuple[ls.Model, ls.Model]) -> None:
    whole, split = pair
    last = whole.shape.n_layers - 1
    v = torch.randn(whole.shape.d_model)
    plan = {Site("resid_post", last): edits.add(v, 2.0, positions=[-1]), Site("attn_z", last, head=0): edits.zero(),
            Site("mlp_out", 0): edits.scale(0.5)}  # fmt: skip
    batch = whole.tokenize(["the dog saw Mary"])
    with ls.intervene(whole, plan):
        ref = whole(batch)
    with ls.intervene(split, plan):
        got = split(batch)
    assert torch.equal(ref, got)
    ids = torch.randint(3, 60, (2, 2, 7))
    clean, corrupt = Batch.unpadded(ids[0]), Batch.unpadded(ids[1])
    specs = [C.PatchSpec(Site("resid_post", la), p) for la in range(whole.shape.n_layers) for p in range(clean.shape[1])]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 5] - logits[:, -1, 7]

    for reuse in (True, False):
        a = C.patch_sweep(whole, clean, corrupt, specs, metric, copies=4, reuse=reuse)
        b = C.patch_sweep(split, clean, corrupt, specs, metric, copies=4, reuse=reuse)
        assert torch.equal(a.values, b.values), reuse


def test_steered_generation_is_equal(pair: tuple[ls.Model, ls.Model]) -> None:
    whole, split = pair
    v = torch.randn(whole.shape.d_model) * 4
    plan = {Site("resid_post", whole.shape.n_layers - 1): edits.add(v, positions="generated")}
    for steer in (False, True):
        with ls.intervene(whole, plan if steer else {}):
            ref = whole.generate_tokens(["the dog", "a fox ran far"], max_new_tokens=6)
        with ls.intervene(split, plan if steer else {}):
            got = split.generate_tokens(["the dog", "a fox ran far"], max_new_tokens=6)
        assert torch.equal(ref, got), steer


def test_our_hooks_leave_accelerates_in_place(pair: tuple[ls.Model, ls.Model]) -> None:
    _, split = pair
    layer = split.layers[-1]
    before = (layer.forward, dict(layer._forward_hooks), dict(layer._forward_pre_hooks), layer._hf_hook)
    with ls.capture(split, [Site("resid_post", split.shape.n_layers - 1)]):
        assert split.layers[-1]._hf_hook is before[3]
        with pytest.raises(RuntimeError):
            with ls.intervene(split, {Site("resid_pre", 0): edits.scale(2.0)}):
                raise RuntimeError("interrupted")
    after = (layer.forward, dict(layer._forward_hooks), dict(layer._forward_pre_hooks), layer._hf_hook)
    assert after == before


def test_load_refuses_tied_weights_in_two_places(smollm: ls.Model, tmp_path: Path) -> None:
    from lmscope.core.loading import DEFAULT_MODEL, _dequantized_copy, bundled_gguf

    placement = {**_split_map(smollm, disk_from=29), "lm_head": "disk"}
    with pytest.raises(ValueError, match="tied"):
        ls.load(_dequantized_copy(bundled_gguf(DEFAULT_MODEL)), device_map=placement, offload_folder=tmp_path)


def test_load_refuses_mixed_placement_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        ls.load(tmp_path, device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="only apply with a device_map"):
        ls.load(tmp_path, offload_folder=tmp_path)


def test_the_bundled_model_split_half_on_disk_matches(smollm: ls.Model, tmp_path: Path) -> None:
    from lmscope.core.loading import DEFAULT_MODEL, _dequantized_copy, bundled_gguf

    folder = _dequantized_copy(bundled_gguf(DEFAULT_MODEL))
    split = ls.load(folder, device_map=_split_map(smollm, disk_from=15), offload_folder=tmp_path / "offload")
    assert split.offloaded and split.weight_hash == smollm.weight_hash
    prompts = ["The capital of France is", "List three benefits of yoga:"]
    sites = [Site("resid_post", la) for la in (0, 14, 15, 29)]
    with ls.capture(smollm, sites) as a:
        ref = smollm(smollm.tokenize(prompts))
    with ls.capture(split, sites) as b:
        got = split(split.tokenize(prompts))
    assert torch.equal(ref, got) and all(torch.equal(a[s], b[s]) for s in sites)
    v = torch.randn(smollm.shape.d_model) * 8
    plan = {Site("resid_post", 20): edits.add(v, positions="generated")}
    with ls.intervene(smollm, plan):
        ref_text = smollm.generate(prompts, max_new_tokens=8)
    with ls.intervene(split, plan):
        got_text = split.generate(prompts, max_new_tokens=8)
    assert ref_text == got_text


def test_the_cli_splits_a_model_with_a_device_map_file(pair: tuple[ls.Model, ls.Model], tmp_path: Path) -> None:
    import json

    from lmscope.cli.main import main

    whole, _ = pair
    folder = tmp_path / "model"
    whole.hf.save_pretrained(folder)
    whole.tokenizer.save_pretrained(folder)
    placement = tmp_path / "map.json"
    placement.write_text(json.dumps(_split_map(whole, disk_from=1)))
    common = ["lens", "the dog saw", "--model", str(folder), "--quiet"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    assert main([*common, "--device-map", str(placement), "--offload-folder", str(tmp_path / "off"),
                 "--out", str(tmp_path / "split")]) == 0  # fmt: skip
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("whole", "split"))
    assert a["summary"] == b["summary"] and a["data"] == b["data"] and a["identity"] == b["identity"]
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for extra in (["--device-map", str(bad)], ["--device-map", str(tmp_path / "none.json")],
                  ["--offload-folder", str(tmp_path)], ["--device-map", "auto", "--device", "cpu"]):  # fmt: skip
        assert main([*common, *extra, "--out", str(tmp_path / "x")]) == 2, extra
