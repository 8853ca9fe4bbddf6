"""A results folder with one file of each kind the explorer reads, for a tiny llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lmscope as ls
from lmscope.experiments.report import Result
from lmscope.saes import SAE, SAEConfig
from lmscope.saes.interop import save_saelens
from lmscope.steering import SteeringVector

SITE = "blocks.1.hook_resid_post"


def make_results(folder: Path, model: ls.Model, *, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    d = model.shape.d_model
    vecs = folder / "steer"
    vecs.mkdir(parents=True)
    SteeringVector({1: torch.randn(d, generator=g)}, d, "random").save(vecs / "vector.safetensors")
    sae = SAE(SAEConfig("topk", d, 4 * d, k=4, hook_name=SITE), generator=g)
    save_saelens(sae, folder / "sae-train" / "sae")
    r = Result("Activation patching: toy", summary={"resid_strongest": "L1 / pos 2: 0.9", "accuracy": 0.75})
    r.command = "patch"
    r.identity = {"digest": "ab" * 8}
    r.provenance = {"model_id": model.model_id, "lmscope": "test"}
    r.data = {"sweeps": {"resid": {"values": [[0.1, 0.9], [0.5, -0.2]], "rows": ["L0", "L1"], "cols": ["a", "b"]}}}
    r.write(folder / "patch")
    (folder / "broken").mkdir()
    (folder / "broken" / "result.json").write_text("{not json")
    return folder


@pytest.fixture
def results(tmp_path: Path, tiny_llama: ls.Model) -> Path:
    return make_results(tmp_path / "results", tiny_llama)
