"""Harvesting on a local Ray cluster (started by these tests on 127.0.0.1) writes the store a single process writes,
and a worker killed mid-run loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import lmscope as ls
from lmscope.experiments.store import ActivationStore, HarvestConfig, harvest

ray = pytest.importorskip("ray", reason="Ray is not installed (make test installs lmscope[scale])")

SITES = ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"]


@pytest.fixture(scope="module")
def cluster() -> Any:
    """One local Ray cluster for the module (2 CPUs, no dashboard, bound to 127.0.0.1)."""
    saved = signal.getsignal(signal.SIGTERM)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)  # fmt: skip
    signal.signal(signal.SIGTERM, saved)  # ray.init installs its own handler and shutdown leaves it
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model() -> ls.Model:
    return ls.load_tiny("llama")


def _config(**kw: Any) -> HarvestConfig:
    return HarvestConfig(sites=SITES, n_tokens=7 * 31 * 3, seq_len=32, batch_size=3, tokens_per_shard=31 * 3,
                         progress=False, **kw)  # 7 shards of 3 windows  # fmt: skip


def _shards(folder: Path) -> list[tuple[int, dict[str, str]]]:
    m = json.loads((folder / "manifest.json").read_text())
    return [(s["index"], {k: v["sha256"] for k, v in s["files"].items()}) for s in m["shards"]]


@pytest.fixture(scope="module")
def reference(model: ls.Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process store of the same corpus."""
    out = tmp_path_factory.mktemp("single") / "store"
    harvest(model, _config(), out)
    return out


def test_the_cli_starts_its_own_local_cluster_and_writes_the_same_store(model: ls.Model, reference: Path,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    # first in the module: no cluster is running in this process yet, so the command starts (and stops) its own
    assert not ray.is_initialized()
    cmd = [sys.executable, "-m", "lmscope", "harvest", "--tiny", "llama", "--sites", *SITES, "--tokens", str(7 * 31 * 3),
           "--seq-len", "32", "--batch-size", "3", "--shard-tokens", str(31 * 3), "--ray", "local", "--workers", "2",
           "--quiet", "--out", str(tmp_path / "cli")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "LMSCOPE_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert _shards(tmp_path / "cli" / "store") == _shards(reference)
    result = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert result["config"]["ray"] == "local" and result["config"]["workers"] == 2


def test_a_harvest_that_starts_ray_leaves_the_process_signal_handlers_as_they_were(model: ls.Model, reference: Path,
                                                                                   tmp_path: Path) -> None:  # fmt: skip
    assert not ray.is_initialized()  # before the module's cluster: this harvest starts and stops its own

    def mine(signum: int, frame: object) -> None:  # pragma: no cover - never delivered
        raise AssertionError("not delivered")

    interrupt = signal.getsignal(signal.SIGINT)
    before = signal.signal(signal.SIGTERM, mine)
    try:
        harvest(model, _config(), tmp_path / "store", ray="local", workers=1)
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) == interrupt
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not ray.is_initialized() and _shards(tmp_path / "store") == _shards(reference)


def test_a_ray_harvest_writes_the_single_process_store(cluster: Any, model: ls.Model, reference: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    store = harvest(model, _config(), tmp_path / "store", ray="local", workers=2)
    assert store.complete and len(store) == len(ActivationStore(reference))
    assert _shards(tmp_path / "store") == _shards(reference)  # same tokens, same activations: same sha256 per file
    for site in SITES:
        assert torch.equal(store.load_all(site), ActivationStore(reference).load_all(site))


def _kill_a_worker_once(marker: Path) -> Any:
    """An ``on_shard`` callback that SIGKILLs one Ray harvest worker process after the first committed shard."""

    def on_shard(index: int) -> None:
        if marker.exists():
            return
        marker.touch()
        for pid in os.listdir("/proc"):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if pid.isdigit() and b"HarvestWorker" in cmd:
                os.kill(int(pid), signal.SIGKILL)
                return
        raise AssertionError("no Ray HarvestWorker process found to kill")

    return on_shard


def test_a_killed_worker_is_restarted_and_nothing_is_lost_or_duplicated(cluster: Any, model: ls.Model,
                                                                         reference: Path, tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "store"
    store = harvest(model, _config(), out, ray="local", workers=2, on_shard=_kill_a_worker_once(tmp_path / "killed"))
    assert (tmp_path / "killed").exists()
    assert store.complete and _shards(out) == _shards(reference)
    assert sorted(store.tokens()["chunk"].unique().tolist()) == list(range(21))  # every window exactly once
    assert len(store.tokens()["chunk"]) == len(ActivationStore(reference).tokens()["chunk"])


def test_an_interrupted_ray_harvest_resumes_either_way(cluster: Any, model: ls.Model, reference: Path,
                                                       tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "store"

    def stop_at(n: int) -> Any:
        def on_shard(index: int) -> None:
            if len(_shards(out)) >= n:
                raise KeyboardInterrupt  # what Ctrl-C raises in the driver

        return on_shard

    with pytest.raises(KeyboardInterrupt):
        harvest(model, _config(), out, ray="local", workers=2, on_shard=stop_at(3))
    partial = ActivationStore(out)
    assert not partial.complete and len(partial.shards) == 3
    with pytest.raises(KeyboardInterrupt):  # some of the rest on one process, which fills the gaps Ray left
        harvest(model, _config(), out, on_shard=stop_at(5))
    store = harvest(model, _config(), out, ray="local", workers=2)
    assert store.complete and _shards(out) == _shards(reference)


def test_ray_workers_refuse_other_weights_and_hand_built_models(cluster: Any, model: ls.Model, tmp_path: Path) -> None:
    changed = ls.load_tiny("llama")
    with torch.no_grad():
        changed.hf.lm_head.weight.mul_(2)  # edited in memory: a worker reloading from the spec gets other weights
    changed.__dict__.pop("weight_hash", None)
    with pytest.raises(RuntimeError, match="other weights"):
        harvest(changed, _config(), tmp_path / "a", ray="local", workers=1)
    bare = ls.Model(model.hf, model.tokenizer, model_id="by-hand")
    with pytest.raises(ValueError, match="load_spec"):
        harvest(bare, _config(), tmp_path / "b", ray="local", workers=1)
