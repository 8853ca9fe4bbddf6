"""Ctrl-C at random points: no hook survives its context, and active_hooks() never lies.

A real SIGINT is sent to the process from a timer thread at a random moment while contexts are
opened, used and closed in a loop; whatever the interrupt hit, afterwards the module hook dicts
must equal the snapshot taken before, ``active_hooks`` must be empty and the next plain forward
must equal the clean one.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
import torch

import lmscope as ls
from lmscope.core import edits
from lmscope.core.sites import Site


def hook_counts(model: ls.Model) -> dict[str, tuple[int, int]]:
    """Per-module forward and forward-pre hook counts, read from torch's own dicts."""
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.hf.named_modules()}

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")


@pytest.fixture(autouse=True)
def _sigint_raises():
    """Ctrl-C raises KeyboardInterrupt here even when the suite was started with SIGINT ignored
    (``nohup``, a background job of a non-interactive shell: Python then installs no handler)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _cycle(model: ls.Model, batch: ls.Batch, v: torch.Tensor) -> None:
    with ls.capture(model, [Site("resid_post", 0), Site("mlp_post", 1)]):
        with ls.intervene(model, {Site("resid_post", 1): edits.add(v, scale=3.0), Site("attn_z", 0, head=1): edits.zero()}):
            model(batch)


def test_random_sigint_never_leaves_a_hook(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    batch = model.tokenize(["hello world", "a b c"])
    v = torch.randn(model.shape.d_model)
    before = hook_counts(model)
    clean = model(batch)
    t0 = time.perf_counter()
    for _ in range(5):
        _cycle(model, batch, v)
    period = (time.perf_counter() - t0) / 5
    rng = random.Random(0)
    main = threading.main_thread().ident
    assert main is not None
    interrupted = 0
    for _ in range(300):
        timer = threading.Timer(rng.uniform(0, period), signal.pthread_kill, (main, signal.SIGINT))
        try:
            try:
                timer.start()
                for _ in range(3):
                    _cycle(model, batch, v)
            finally:
                timer.join()  # the signal is sent before the timer thread ends
            time.sleep(0.005)  # the handler runs here if it landed after the last cycle
        except KeyboardInterrupt:
            interrupted += 1
        assert ls.active_hooks(model) == []
        assert hook_counts(model) == before
    assert interrupted > 200  # the interrupts really landed (inside or between the contexts)
    assert torch.equal(model(batch), clean)


def test_interrupt_inside_remove_is_finished(tiny_llama: ls.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt raised inside one handle.remove() does not leave that hook (or any other) behind."""
    from torch.utils.hooks import RemovableHandle

    model = tiny_llama
    batch = model.tokenize(["hello world"])
    clean = model(batch)
    before = hook_counts(model)
    remove = RemovableHandle.remove
    calls: list[int] = []

    def flaky(self: RemovableHandle) -> None:
        calls.append(self.id)
        if len(calls) == 2:  # the second removal is interrupted before it does anything
            raise KeyboardInterrupt
        remove(self)

    monkeypatch.setattr(RemovableHandle, "remove", flaky)
    with pytest.raises(KeyboardInterrupt):
        with ls.intervene(model, {Site("resid_post", 0): edits.add(torch.ones(model.shape.d_model), scale=5.0)}):
            model(batch)
    monkeypatch.undo()
    assert len(calls) >= 2
    assert hook_counts(model) == before and ls.active_hooks(model) == []
    assert torch.equal(model(batch), clean)


def test_active_hooks_reads_the_modules(tiny_llama: ls.Model) -> None:
    """A hook attached behind lmscope's back (a leak) is reported, not hidden by bookkeeping."""
    model = tiny_llama
    with ls.intervene(model, {Site("resid_post", 0): edits.scale(2.0)}):
        held = [h for h in model.layers[0]._forward_hooks.values() if hasattr(h, "__lmscope__")]
    assert ls.active_hooks(model) == []
    handle = model.layers[0].register_forward_hook(held[0])  # simulate a hook that removal missed
    try:
        assert [r.site for r in ls.active_hooks(model)] == ["blocks.0.hook_resid_post"]
        # and the stray hook is inert: its context is closed
        batch = model.tokenize(["hello world"])
        ref = model(batch)
    finally:
        handle.remove()
    assert torch.equal(ref, model(batch))


def test_gradient_tensor_hooks_are_listed_and_removed(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    batch = model.tokenize(["hello world"])
    with ls.capture(model, [Site("resid_post", 1)], grads=True) as acts:
        logits = model(batch, grad=True)
        assert any(r.owner == "grad" for r in ls.active_hooks(model))
    assert ls.active_hooks(model) == []
    logits.sum().backward()  # after the block: the tensor hook is gone, nothing is recorded
    assert Site("resid_post", 1) not in acts.grads


def test_sigint_during_interrupt_deferral_is_raised_after(tiny_llama: ls.Model) -> None:
    """The deferred Ctrl-C is not lost: it is raised once registration/removal is complete."""
    from lmscope.core.hooks import _interrupts_deferred

    with pytest.raises(KeyboardInterrupt):
        with _interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            done = True
    assert done
