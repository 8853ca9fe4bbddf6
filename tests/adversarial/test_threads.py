"""Two threads on one model: an lmscope context is thread-local, like torch.no_grad().

A context acts only on forward passes run by the thread that opened it. A plain forward in
another thread is the clean model; two threads capturing at once each get their own tensors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

import lmscope as ls
from lmscope.core import edits
from lmscope.core.sites import Site

SITE = Site("resid_post", 1)


def _run_together(*jobs: Callable[[], None]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def wrap(job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                start.wait()
                job()
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(j)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_steering_in_one_thread_never_reaches_another(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    batch = model.tokenize(["hello world", "the quick brown fox"])
    clean = model(batch)
    v = torch.randn(model.shape.d_model) * 10
    with ls.intervene(model, {SITE: edits.add(v)}):
        steered = model(batch)
    assert not torch.allclose(steered, clean)
    plain_out: list[torch.Tensor] = []
    steered_out: list[torch.Tensor] = []

    def plain() -> None:
        for _ in range(60):
            plain_out.append(model(batch))

    def steer() -> None:
        for _ in range(60):
            with ls.intervene(model, {SITE: edits.add(v)}):
                steered_out.append(model(batch))

    _run_together(plain, steer)
    assert all(torch.allclose(o, clean, atol=1e-5) for o in plain_out)
    assert all(torch.allclose(o, steered, atol=1e-5) for o in steered_out)
    assert ls.active_hooks(model) == []


def test_concurrent_captures_get_their_own_tensors(tiny_llama: ls.Model) -> None:
    model = tiny_llama
    a, b = model.tokenize(["hello world"]), model.tokenize(["a completely different prompt here"])
    with ls.capture(model, [SITE]) as acts:
        model(a)
    ref_a = acts[SITE]
    with ls.capture(model, [SITE]) as acts:
        model(b)
    ref_b = acts[SITE]
    got: dict[str, list[torch.Tensor]] = {"a": [], "b": []}

    def job(name: str, batch: ls.Batch) -> Callable[[], None]:
        def run() -> None:
            for _ in range(60):
                with ls.capture(model, [SITE]) as acts:
                    model(batch)
                got[name].append(acts[SITE])

        return run

    _run_together(job("a", a), job("b", b))
    assert all(t.shape == ref_a.shape and torch.allclose(t, ref_a, atol=1e-5) for t in got["a"])
    assert all(t.shape == ref_b.shape and torch.allclose(t, ref_b, atol=1e-5) for t in got["b"])


def test_generation_prompt_length_is_per_thread(tiny_llama: ls.Model) -> None:
    """positions="generated" follows each thread's own generate call."""
    model = tiny_llama
    v = torch.randn(model.shape.d_model) * 5
    short, long = "hi", "a much longer prompt with many more tokens in it"
    refs = {}
    for p in (short, long):
        with ls.intervene(model, {SITE: edits.add(v, positions="generated")}):
            refs[p] = model.generate(p, max_new_tokens=6)
    out: dict[str, list[str]] = {short: [], long: []}

    def job(p: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(8):
                with ls.intervene(model, {SITE: edits.add(v, positions="generated")}):
                    out[p].append(model.generate(p, max_new_tokens=6))  # type: ignore[arg-type]

        return run

    _run_together(job(short), job(long))
    assert out[short] == [refs[short]] * 8 and out[long] == [refs[long]] * 8
