"""One job at a time, a bounded queue, cancellation of jobs whose request gave up."""

from __future__ import annotations

import threading
import time

import pytest

from lmscope.serve.jobs import Busy, JobQueue


def test_jobs_run_one_at_a_time_in_order() -> None:
    q = JobQueue(max_waiting=8, timeout=5)
    running, seen, order = [0], [], []
    lock = threading.Lock()

    def work(i: int):
        def fn(cancel: threading.Event) -> int:
            with lock:
                running[0] += 1
                seen.append(running[0])
            time.sleep(0.02)
            order.append(i)
            with lock:
                running[0] -= 1
            return i

        return fn

    jobs = [q.submit(f"j{i}", work(i)) for i in range(5)]
    assert [j.future.result(timeout=5) for j in jobs] == list(range(5))
    assert order == list(range(5)) and max(seen) == 1
    assert q.status()["done"] == 5
    q.close()


def test_a_full_queue_refuses_at_once_and_status_shows_it() -> None:
    q = JobQueue(max_waiting=1, timeout=5)
    gate = threading.Event()
    first = q.submit("slow", lambda c: gate.wait(5))
    while q.status()["running"] != "slow":
        time.sleep(0.005)
    second = q.submit("waiting", lambda c: 2)
    assert q.status()["waiting"] == ["waiting"]
    with pytest.raises(Busy, match="busy"):
        q.submit("third", lambda c: 3)
    gate.set()
    assert first.future.result(5) is True and second.future.result(5) == 2
    q.close()


def test_a_cancelled_waiting_job_never_runs_and_errors_reach_the_caller() -> None:
    q = JobQueue(max_waiting=4, timeout=5)
    gate = threading.Event()
    q.submit("slow", lambda c: gate.wait(5))
    ran = []
    doomed = q.submit("doomed", lambda c: ran.append(1))
    doomed.cancel.set()
    bad = q.submit("bad", lambda c: 1 / 0)
    gate.set()
    with pytest.raises(ZeroDivisionError):
        bad.future.result(5)
    assert doomed.future.cancelled() and ran == []
    assert q.status()["cancelled"] == 1 and q.status()["failed"] == 1
    q.close()
