"""The ``lmscope sae`` and ``lmscope neurons`` commands end to end on a tiny model."""

from __future__ import annotations

import json

import torch

import lmscope as ls
from lmscope.cli.main import main
from lmscope.experiments.store import HarvestConfig, harvest
from lmscope.saes.interop import load_saelens

SITE = "blocks.1.hook_resid_post"


def test_sae_train_resume_eval_dashboard(tmp_path) -> None:
    model = ls.load_tiny("llama")
    harvest(model, HarvestConfig(sites=[SITE], n_tokens=1260, seq_len=64, tokens_per_shard=630, progress=False),
            tmp_path / "store")  # fmt: skip
    train = ["sae", "train", "--tiny", "llama", "--store", str(tmp_path / "store"), "--site", SITE, "--d-sae", "96",
             "--k", "4", "--tokens", "2400", "--batch", "200", "--checkpoint-every", "4", "--out", str(tmp_path / "run")]
    assert main(train) == 0
    first = json.loads((tmp_path / "run" / "result.json").read_text())["summary"]
    assert first["steps"] == 12 and first["resumed_from"] == 0
    assert main(train) == 0  # a rerun finds the finished checkpoint and does not train again
    again = json.loads((tmp_path / "run" / "result.json").read_text())["summary"]
    assert again["resumed_from"] == 12
    sae = load_saelens(tmp_path / "run" / "sae")
    assert sae.cfg.hook_name == SITE and sae.cfg.k == 4
    prov = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["metadata"]["provenance"]
    assert prov["weight_hash"] == model.weight_hash and len(prov["dataset_hash"]) == 64  # RELIABILITY E20
    # a rerun with one input changed (the seed) refuses the finished checkpoint, naming what changed
    assert main([*train[:-2], "--seed", "1", "--out", str(tmp_path / "run")]) != 0
    assert main(["sae", "eval", "--tiny", "llama", "--sae", str(tmp_path / "run" / "sae"), "--windows", "4", "--seq-len", "32",
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    ev = json.loads((tmp_path / "eval" / "result.json").read_text())["summary"]
    assert ev["l0"] <= 4 and 0 <= ev["dead_frac"] <= 1
    assert main(["sae", "dashboard", "--tiny", "llama", "--sae", str(tmp_path / "run" / "sae"), "--store",
                 str(tmp_path / "store"), "--n-latents", "5", "--out", str(tmp_path / "dash")]) == 0  # fmt: skip
    assert (tmp_path / "dash" / "latents" / "index.html").exists()
    assert len(list((tmp_path / "dash" / "latents").glob("latent_*.html"))) == 5


def test_sae_cli_refuses_a_file_without_its_rule(tmp_path, capsys) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 8}))
    from safetensors.torch import save_file

    save_file({"W_enc": torch.zeros(64, 8)}, str(tmp_path / "sae_weights.safetensors"))
    assert main(["sae", "eval", "--tiny", "llama", "--sae", str(tmp_path)]) == 2
    assert "refusing to guess ReLU" in capsys.readouterr().err


def test_neurons_correlate_and_ablate_commands(tmp_path) -> None:
    out = tmp_path / "corr"
    assert main(["neurons", "correlate", "--tiny", "llama", "--layers", "0-1", "--train-windows", "6",
                 "--heldout-windows", "4", "--seq-len", "32", "--top", "2", "--out", str(out)]) == 0  # fmt: skip
    res = json.loads((out / "result.json").read_text())["data"]
    assert len(res["candidates"]) == 2 and (out / "auroc_hist.png").exists()
    c = res["candidates"][0]
    assert main(["neurons", "ablate", "--tiny", "llama", "--layer", str(c["layer"]), "--neurons", str(c["neuron"]),
                 "--windows", "2", "--seq-len", "32", "--controls", "2", "--out", str(tmp_path / "abl")]) == 0  # fmt: skip
    abl = json.loads((tmp_path / "abl" / "result.json").read_text())["data"]
    assert set(abl["modes"]) == {"zero", "mean", "resample"}
