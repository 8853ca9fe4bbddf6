"""The GPU path (F26 and the --device/--dtype promise): run where a CUDA GPU is present, skipped with a reason elsewhere.

    .venv/bin/python -m pytest -m gpu -q        # on a machine with a GPU
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmscope as ls
from lmscope.cli.main import main
from lmscope.core import edits
from lmscope.core.sites import Site

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _places(model: ls.Model) -> dict[str, str]:
    return {n: str(p.device) for n, p in model.hf.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_gpu_model_matches_the_cpu_model(smollm: ls.Model, dtype: torch.dtype) -> None:
    gpu = ls.load(dtype=dtype, device="cuda")
    prompts = ["The capital of France is", "List three benefits of yoga:"]
    sites = [Site("resid_post", la) for la in (0, 15, 29)]
    with ls.capture(smollm, sites) as ref:
        cpu_logits = smollm(smollm.tokenize(prompts))
    places = _places(gpu)
    with ls.capture(gpu, sites, device="cpu") as got:
        gpu_logits = gpu(gpu.tokenize(prompts))
    assert _places(gpu) == places and gpu_logits.device.type == "cuda"  # capturing moved nothing
    tol = 1e-3 if dtype == torch.float32 else 0.1
    for s in sites:
        assert got[s].device.type == "cpu" and got[s].dtype == dtype
        scale = ref[s].abs().mean()
        assert float((got[s].float() - ref[s]).abs().mean() / scale) < tol, (s, dtype)
    assert (gpu_logits.float().argmax(-1).cpu() == cpu_logits.argmax(-1)).float().mean() > 0.9


def test_steering_on_the_gpu_changes_generation_like_on_the_cpu(smollm: ls.Model) -> None:
    gpu = ls.load(device="cuda")
    v = torch.randn(smollm.shape.d_model) * 8
    plan = {Site("resid_post", 10): edits.add(v, positions="generated")}
    for model in (smollm, gpu):
        with ls.intervene(model, plan):
            steered = model.generate("The weather today is", max_new_tokens=12)
        assert steered != model.generate("The weather today is", max_new_tokens=12)


def test_a_device_map_auto_split_between_gpu_and_cpu_matches(smollm: ls.Model, tmp_path: Path) -> None:
    split = ls.load(device_map="auto", max_memory={0: "150MiB", "cpu": "8GiB"}, offload_folder=tmp_path)
    assert len(set(split.hf.hf_device_map.values())) > 1, split.hf.hf_device_map
    prompts = ["The capital of France is"]
    with ls.capture(split, [Site("resid_post", 29)], device="cpu") as got:
        split(split.tokenize(prompts))
    with ls.capture(smollm, [Site("resid_post", 29)]) as ref:
        smollm(smollm.tokenize(prompts))
    assert torch.allclose(got[Site("resid_post", 29)], ref[Site("resid_post", 29)], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_reproduce_stop_runs_on_the_gpu(tmp_path: Path, dtype: str) -> None:
    assert main(["reproduce", "--device", "cuda", "--dtype", dtype, "--quiet", "--out", str(tmp_path)]) == 0
    results = list(tmp_path.rglob("result.json"))
    assert len(results) > 5
    for path in results:
        prov = json.loads(path.read_text())["provenance"]
        if prov["model_id"] is not None:
            assert prov["device"].startswith("cuda") and prov["dtype"] == dtype, path


def test_sae_training_on_the_gpu_from_a_store(tmp_path: Path) -> None:
    common = ["--device", "cuda", "--quiet"]
    assert main(["harvest", "--sites", "blocks.12.hook_resid_post", "--tokens", "8128", *common, "--out",
                 str(tmp_path / "h")]) == 0  # fmt: skip
    assert main(["sae", "train", "--store", str(tmp_path / "h" / "store"), "--site", "blocks.12.hook_resid_post",
                 "--d-sae", "1152", "--k", "16", "--tokens", "16384", "--batch", "1024", *common,
                 "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "s" / "result.json").read_text())["summary"]
    assert summary["fvu"] < 1.0
