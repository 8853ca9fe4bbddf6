"""Every resumable command, rerun into the same folder with one input changed, refuses and names the change
(it never returns the old numbers under the new settings); rerun unchanged, it resumes."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.cli.main import main
from lmscope.steering import SteeringVector

SITE = "blocks.1.hook_resid_post"
BASE = ["--tiny", "llama", "--quiet"]


def _vector(path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    SteeringVector({1: torch.randn(64, generator=g)}, 64).save(path)


def test_steer_sweep_refuses_a_vector_changed_in_place(tmp_path, capsys) -> None:
    vec = tmp_path / "v.safetensors"
    _vector(vec, 0)
    argv = ["steer", "sweep", "--vector", str(vec), "--behaviour", "sentiment", "--layers", "1", "--strength", "2",
            "--n-prompts", "2", "--max-new-tokens", "3", "--n-capability", "2", "--out", str(tmp_path / "s"), *BASE]  # fmt: skip
    assert main(argv) == 0
    first = json.loads((tmp_path / "s" / "result.json").read_text())["data"]
    assert main(argv) == 0  # unchanged: every cell comes from the checkpoint, same numbers
    assert json.loads((tmp_path / "s" / "result.json").read_text())["data"]["cells"] == first["cells"]
    capsys.readouterr()
    _vector(vec, 1)  # same path, other numbers
    assert main(argv) == 1
    assert "holds work for other inputs" in capsys.readouterr().err
    _vector(vec, 0)
    assert main(argv) == 0  # the original vector back: resumes
    assert main([*argv, "--n-prompts", "1"]) == 1  # another prompt count: the behaviour data differ


def test_sae_train_refuses_a_changed_learning_rate(tmp_path, capsys) -> None:
    argv = ["sae", "train", "--site", SITE, "--d-sae", "16", "--k", "2", "--tokens", "256", "--batch", "64",
            "--out", str(tmp_path / "sae"), *BASE]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--lr", "0.01"]) == 1
    assert "lr was 0.0004, now 0.01" in capsys.readouterr().err


def test_tuned_lens_train_refuses_a_changed_learning_rate(tmp_path, capsys) -> None:
    argv = ["tuned-lens", "train", "--tokens", "128", "--seq-len", "16", "--batch-size", "2", "--warmup", "1",
            "--compare-windows", "0", "--out", str(tmp_path / "tl"), *BASE]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--lr", "0.5"]) == 1
    assert "config.lr was 0.001, now 0.5" in capsys.readouterr().err


def test_introspect_refuses_a_changed_temperature(tmp_path, capsys) -> None:
    argv = ["introspect", "--layers", "1", "--strength", "1", "--n-concepts", "1", "--trials", "1", "--n-baseline", "4",
            "--max-new-tokens", "2", "--out", str(tmp_path / "i"), *BASE]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--temperature", "0.5"]) == 1
    assert "temperature" in capsys.readouterr().err


@pytest.mark.parametrize("change", [["--seed", "1"], ["--seq-len", "32"]])
def test_harvest_refuses_other_settings(tmp_path, capsys, change) -> None:
    argv = ["harvest", "--sites", SITE, "--tokens", "128", "--seq-len", "16", "--shard-tokens", "64",
            "--out", str(tmp_path / "h"), *BASE]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, *change]) == 1
    err = capsys.readouterr().err
    assert "overwrite" in err or "other" in err, err
