"""Prefix reuse: forwards that start at a layer and position give what a full forward gives."""

from __future__ import annotations

import threading

import pytest
import torch

import lmscope as ls
from lmscope import circuits as C
from lmscope.circuits.patching import _chunks
from lmscope.core import edits
from lmscope.core.prefix import Prefix
from lmscope.core.sites import Site

from ._toys import toy_task


def _specs(model: ls.Model, seq: int) -> list[C.PatchSpec]:
    L, H = model.shape.n_layers, model.shape.n_heads
    out = [C.PatchSpec(Site("resid_post", la), p) for la in range(L) for p in range(seq)]
    out += [C.PatchSpec(Site("resid_pre", la), p) for la in range(L) for p in (0, seq - 1)]
    out += [C.PatchSpec(Site("attn_z", la), None, h) for la in range(L) for h in range(H)]
    out += [C.PatchSpec(Site("attn_z", 1), 2, 3), C.PatchSpec(Site("mlp_out", 0)), C.PatchSpec(Site("attn_out", 2), -1),
            C.PatchSpec(Site("embed", 0), 1), C.PatchSpec(Site("final_norm", 0), -1)]  # fmt: skip
    return out


def test_prefix_forward_equals_the_full_forward(tiny: ls.Model) -> None:
    batch = tiny.tokenize(["the dog saw Mary", "a fox ran far away"])
    n, seq = batch.shape
    full = tiny(batch)
    prefix = Prefix(tiny, batch)
    rows = torch.arange(3 * n) % n
    for layer in range(tiny.shape.n_layers):
        for pos in (0, 1, seq - 1) if prefix.reuses_positions else (0,):
            got = prefix.forward(copies=3, layer=layer, position=pos)
            assert torch.allclose(got, full[rows, pos:], atol=1e-5), (layer, pos)
            last = prefix.forward(copies=3, layer=layer, position=pos, logits_to_keep=1)
            assert torch.allclose(last, full[rows, -1:], atol=1e-5)
    assert ls.active_hooks(tiny) == []


def test_an_edit_at_the_start_layer_and_position_matches_a_full_forward(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    batch = model.tokenize(["the dog saw Mary", "a fox ran far away"])
    v = torch.randn(model.shape.d_model) * 3
    prefix = Prefix(model, batch)
    with ls.intervene(model, {Site("resid_pre", 2): edits.add(v, positions=[3])}):
        full = model(batch)
        got = prefix.forward(copies=2, layer=2, position=3)
    assert torch.allclose(got, full[torch.arange(2 * batch.shape[0]) % batch.shape[0], 3:], atol=1e-5)


def test_reuse_gives_the_values_of_the_full_recompute(tiny: ls.Model) -> None:
    task = toy_task(tiny)
    clean, corrupt = task.batches(tiny)
    specs = _specs(tiny, clean.shape[1])
    for direction in ("denoise", "noise"):
        full = C.patch_sweep(tiny, clean, corrupt, specs, task.metric, copies=16, reuse=False, direction=direction)
        for keep in (0, 1):
            fast = C.patch_sweep(tiny, clean, corrupt, specs, task.metric, copies=16, logits_to_keep=keep,
                                 direction=direction)  # fmt: skip
            assert torch.allclose(fast.values, full.values, atol=1e-5)
            assert fast.clean == pytest.approx(full.clean, abs=1e-5)
            assert fast.corrupt == pytest.approx(full.corrupt, abs=1e-5)
    assert ls.active_hooks(tiny) == []


def test_chunks_cover_every_patch_once_within_copies_and_start_no_later_than_it() -> None:
    L, seq = 6, 10
    specs = [C.PatchSpec(Site("resid_post", la), p) for la in range(L) for p in range(seq)]
    specs += [C.PatchSpec(Site("attn_out", 3)), C.PatchSpec(Site("embed", 0), 4), C.PatchSpec(Site("mlp_out", 5), -3)]
    for copies in (1, 3, 16):
        chunks = _chunks(specs, L, seq, copies, positions=True)
        seen = sorted(i for _, _, members in chunks for i in members)
        assert seen == list(range(len(specs)))
        for layer, pos, members in chunks:
            assert 1 <= len(members) <= copies
            for i in members:
                s = specs[i]
                assert layer <= max(0, s.site.depth(L)[0])
                assert s.position is None and pos == 0 or s.position is not None and pos <= s.position % seq


def test_layers_are_restored_after_an_error_and_other_threads_run_the_real_model(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    batch = model.tokenize(["the dog saw Mary"])
    layers = list(model.layers)
    prefix = Prefix(model, batch)

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), ls.intervene(model, {Site("resid_post", 2): edits.custom(boom)}):
        prefix.forward(copies=2, layer=2, position=1)
    assert list(model.layers) == layers and ls.active_hooks(model) == []

    ref = model(batch)
    seen: dict[str, torch.Tensor] = {}
    with prefix._replaced(2, prefix.inputs[2]):  # stand-ins installed in this thread only
        t = threading.Thread(target=lambda: seen.setdefault("logits", model(batch)))
        t.start()
        t.join()
    assert torch.allclose(seen["logits"], ref, atol=1e-6)
    assert list(model.layers) == layers


def test_bad_starts_raise(tiny_llama: ls.Model) -> None:
    prefix = Prefix(tiny_llama, tiny_llama.tokenize(["the dog saw Mary"]))
    with pytest.raises(IndexError, match="layer"):
        prefix.forward(copies=1, layer=tiny_llama.shape.n_layers)
    with pytest.raises(IndexError, match="position"):
        prefix.forward(copies=1, position=99)
    with pytest.raises(ValueError, match="logits_to_keep"):
        prefix.forward(copies=1, position=3, logits_to_keep=5)
