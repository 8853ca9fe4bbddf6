"""RELIABILITY.md F25 and F26: captures hold what they say, release it, and never move the model.

CPU tensors are invisible to tracemalloc, so memory is accounted two ways: the bytes of every live
tensor storage the garbage collector can see (deduplicated by storage), and weak references to the
captured tensors (dead once the user drops the cache: nothing inside lmscope or HF kept them).
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import pytest
import torch

import lmscope as ls
from lmscope.core.sites import Site

from ._util import PROMPTS, editable_sites, hook_counts

MB = 1 << 20


def live_tensor_bytes() -> int:
    """Bytes of all distinct tensor storages reachable by the garbage collector."""
    gc.collect()
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            st = obj.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
    return total


def test_tensors_are_visible_to_the_accounting() -> None:
    before = live_tensor_bytes()
    big = torch.zeros(MB)  # 4 MiB
    assert live_tensor_bytes() - before >= 4 * MB
    del big
    assert abs(live_tensor_bytes() - before) < MB


# ---- F25 ------------------------------------------------------------------------------------------
def test_f25_one_site_stores_one_activation(tiny: ls.Model) -> None:
    """Each captured tensor owns exactly its own bytes: no view pinning a larger fused tensor."""
    batch = tiny.tokenize(PROMPTS)
    sites = [*editable_sites(tiny), *tiny.sites(["attn_pattern"]), Site("attn_pattern", 0, head=1)]
    for site in sites:
        with ls.capture(tiny, [site]) as acts:
            tiny(batch)
        assert list(acts) == [site]
        t = acts[site]
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), f"{site} pins a larger tensor"
        assert t.grad_fn is None and not t.requires_grad
        b, s = batch.shape
        assert t.shape[:1] == (b,) and (s in t.shape)


def test_f25_repeated_captures_return_to_baseline(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    batch = model.tokenize(PROMPTS)
    sites = model.sites(["resid_post", "attn_z", "mlp_post", "attn_pattern"])
    model(batch)  # warm up lazy buffers (rotary caches, masks)
    with ls.capture(model, sites) as acts:
        model(batch)
    one_pass = sum(acts[s].numel() * acts[s].element_size() for s in sites)
    del acts
    hooks = hook_counts(model)
    base_tensors = live_tensor_bytes()
    tracemalloc.start()
    try:
        base_py = tracemalloc.get_traced_memory()[0]
        refs: list[weakref.ref] = []
        for i in range(100):
            if i % 10 == 9:  # some with gradients: the graph must go too
                with ls.capture(model, sites[:2], grads=True) as acts:
                    model(batch, grad=True).sum().backward()
                model.hf.zero_grad(set_to_none=True)
                refs += [weakref.ref(t) for t in acts.grads.values()]
            else:
                with ls.capture(model, sites) as acts:
                    model(batch)
            refs += [weakref.ref(acts[s]) for s in acts]
            del acts
        gc.collect()
        grown_py = tracemalloc.get_traced_memory()[0] - base_py
    finally:
        tracemalloc.stop()
    grown = live_tensor_bytes() - base_tensors
    assert one_pass > 10_000
    assert all(r() is None for r in refs), "a captured tensor is still referenced after the cache was dropped"
    assert abs(grown) <= MB, f"live tensor memory grew by {grown} bytes after 100 captures"
    assert grown_py <= MB, f"Python allocations grew by {grown_py} bytes after 100 captures"
    assert hook_counts(model) == hooks and ls.active_hooks(model) == []


# ---- F26 ------------------------------------------------------------------------------------------
def _param_places(model: ls.Model) -> dict[str, tuple[torch.device, int]]:
    return {n: (p.device, p.data_ptr()) for n, p in model.hf.named_parameters()}


def test_f26_capture_to_a_device_never_moves_the_model(tiny_gpt2: ls.Model) -> None:
    model = tiny_gpt2
    places = _param_places(model)
    site = Site("resid_post", 1)
    with ls.capture(model, [site], device="cpu") as cpu:
        model(PROMPTS)
    with ls.capture(model, [site]) as ref:
        model(PROMPTS)
    assert cpu[site].device.type == "cpu" and torch.equal(cpu[site], ref[site])
    # Another device than the model's: the activation goes there, the model stays put.
    with ls.capture(model, [site], device="meta") as meta:
        model(PROMPTS)
    assert meta[site].device.type == "meta" and meta[site].shape == ref[site].shape
    assert _param_places(model) == places and model.device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_f26_capture_to_cpu_from_a_gpu_model() -> None:
    model = ls.load_tiny("llama")
    model.hf.to("cuda")
    places = _param_places(model)
    site = Site("resid_post", 1)
    with ls.capture(model, [site], device="cpu") as acts:
        model(PROMPTS)
    with ls.capture(model, [site]) as ref:
        model(PROMPTS)
    assert acts[site].device.type == "cpu" and ref[site].device.type == "cuda"
    assert torch.allclose(acts[site], ref[site].cpu())
    assert _param_places(model) == places
