"""`sae compare`: four variants on one store, each row the evaluation of the SAE it saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmscope as ls
from lmscope.experiments import run
from lmscope.saes.compare import SAECompare
from lmscope.saes.experiments import _chunks
from lmscope.saes.interop import load_saelens
from lmscope.saes.metrics import evaluate_sae


def test_each_row_is_the_evaluation_of_the_saved_sae_and_a_rerun_resumes(tmp_path: Path) -> None:
    model = ls.load_tiny("llama")
    exp = SAECompare(site="blocks.1.hook_resid_post", d_sae=64, k=4, tokens=2048, store_tokens=1024, batch=256,
                     windows=4, seq_len=32)  # fmt: skip
    first = run(exp, model=model, out=tmp_path, quiet=True)
    assert set(first.summary) == {"standard", "topk", "batchtopk", "jumprelu"}
    chunks = _chunks(model, 4, 32, "heldout")
    for arch, row in first.summary.items():
        saved = load_saelens(tmp_path / arch / "sae")
        # SAELens has no BatchTopK at inference: it is saved as the JumpReLU its learned threshold defines
        assert saved.cfg.architecture == ("jumprelu" if arch == "batchtopk" else arch)
        ev = evaluate_sae(model, saved, chunks).summary()
        for key in ("l0", "fvu", "ce_recovered", "kl_spliced", "dead_frac"):
            assert row[key] == pytest.approx(ev[key], rel=1e-5, abs=1e-6), (arch, key)
    assert first.summary["topk"]["l0"] == pytest.approx(4.0)
    again = run(exp, model=model, out=tmp_path, quiet=True)  # every SAE resumes from its final checkpoint
    for arch in first.summary:
        assert again.summary[arch]["fvu"] == pytest.approx(first.summary[arch]["fvu"], rel=1e-6)
    assert json.loads((tmp_path / "result.json").read_text())["summary"]["topk"]["l0"] == pytest.approx(4.0)


def test_bad_settings_are_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="not one of"):
        SAECompare(archs=("gated",)).validate()
    with pytest.raises(ValueError, match="positive"):
        SAECompare(d_sae=0).validate()


def test_rerunning_a_finished_harvest_leaves_its_manifest_untouched(tmp_path: Path) -> None:
    from lmscope.experiments.store import HarvestConfig, harvest

    model = ls.load_tiny("llama")
    cfg = HarvestConfig(sites=["blocks.1.hook_resid_post"], n_tokens=640, seq_len=32, tokens_per_shard=124, progress=False)
    harvest(model, cfg, tmp_path)
    before = (tmp_path / "manifest.json").read_bytes()
    harvest(model, cfg, tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == before  # SAE checkpoints fingerprint it


def test_a_sweep_keeps_the_coefficient_whose_training_l0_is_closest_to_k(tmp_path: Path) -> None:
    model = ls.load_tiny("llama")
    exp = SAECompare(site="blocks.1.hook_resid_post", d_sae=64, k=8, tokens=2048, store_tokens=1024, batch=256, windows=2,
                     seq_len=32, archs=("standard",), sweep_l1=(0.01, 30.0))  # fmt: skip
    res = run(exp, model=model, out=tmp_path, quiet=True)
    rows = {r[1]: r for r in res.data["sweep"]}
    assert set(rows) == {0.01, 30.0} and sum(r[4] == "chosen" for r in rows.values()) == 1
    chosen = min(rows.values(), key=lambda r: abs(r[2] - 8))
    assert chosen[4] == "chosen" and res.summary["standard"]["coefficient"] == chosen[1]
    assert rows[0.01][2] > rows[30.0][2]  # a weaker penalty leaves more latents active
    assert (tmp_path / f"standard-{chosen[1]:g}" / "sae").exists()
    with pytest.raises(ValueError, match="positive"):
        SAECompare(sweep_l0=(0.0,)).validate()
