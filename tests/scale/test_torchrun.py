"""SAE training under torchrun (two gloo processes on 127.0.0.1) matches single-process training, and resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmscope as ls
from lmscope.experiments.store import HarvestConfig, harvest

SITE = "blocks.1.hook_resid_post"
HERE = Path(__file__).parent
TOLERANCE = 1e-4
"""Largest weight difference allowed between 2-rank and 1-process training (float summation order only)."""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_signals() -> None:
    """The children start with default signal handling and nothing blocked, whatever state the test process is in
    after the rest of the suite (it has been seen ignoring SIGINT there)."""
    import signal

    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _torchrun(*args: str, ranks: int = 2, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={_port()}", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMSCOPE_THREADS": "2"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=_clean_signals)
    assert done.returncode == 0 or not check, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "store"
    harvest(ls.load_tiny("llama"), HarvestConfig(sites=[SITE], n_tokens=4096, seq_len=64, progress=False), out)
    return out


def _lmscope(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "lmscope", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LMSCOPE_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _train_args(store: Path, out: Path) -> list[str]:
    return ["sae", "train", "--tiny", "llama", "--store", str(store), "--site", SITE, "--d-sae", "128", "--k", "8",
            "--tokens", str(256 * 30), "--batch", "256", "--lr", "0.001", "--checkpoint-every", "10", "--quiet",
            "--out", str(out)]  # fmt: skip


def test_torchrun_sae_train_matches_one_process(store: Path, tmp_path: Path) -> None:
    _lmscope(*_train_args(store, tmp_path / "one"))
    done = _torchrun("-m", "lmscope", *_train_args(store, tmp_path / "ddp"))
    assert done.stdout.count("wrote ") == 1  # rank 0 reports and writes; rank 1 does neither
    one, ddp = (load_file(str(tmp_path / d / "sae" / "sae_weights.safetensors")) for d in ("one", "ddp"))
    assert one.keys() == ddp.keys()
    diffs = {k: float((one[k] - ddp[k]).abs().max()) for k in one}
    assert max(diffs.values()) < TOLERANCE, diffs
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["provenance"]["ranks"] == 2 and result["summary"]["steps"] == 30
    single = json.loads((tmp_path / "one" / "result.json").read_text())["summary"]
    for key in ("mse", "fvu", "l0"):  # the global batch's metrics, combined over the ranks
        assert abs(result["summary"][key] - single[key]) <= 1e-4 * max(1.0, abs(single[key])), key


def test_torchrun_training_resumes_to_the_uninterrupted_result(store: Path, tmp_path: Path) -> None:
    script = str(HERE / "_ddp_train.py")
    _torchrun(script, str(store), SITE, str(tmp_path / "straight"), "0")
    _torchrun(script, str(store), SITE, str(tmp_path / "resumed"), "20")  # stops after the step-20 checkpoint
    assert (tmp_path / "resumed" / "resumed-20.txt").read_text() == "0"
    _torchrun(script, str(store), SITE, str(tmp_path / "resumed"), "0")
    assert (tmp_path / "resumed" / "resumed-40.txt").read_text() == "20"
    a = load_file(str(tmp_path / "straight" / "weights-40.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "weights-40.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_other_experiments_refuse_torchrun(store: Path, tmp_path: Path) -> None:
    done = _torchrun("-m", "lmscope", "lens", "--tiny", "llama", "hello", "--out", str(tmp_path / "x"), check=False)
    assert done.returncode != 0 and "does not run data-parallel" in done.stderr
    assert not (tmp_path / "x" / "result.json").exists()
