"""One model job at a time, a bounded visible queue, and a time limit on each job.

The model has one set of hooks, so the explorer runs every computation that touches it in one
worker thread, in arrival order. A request that would make the queue longer than
``max_waiting`` is refused at once (:class:`Busy`, HTTP 503) instead of hanging; a job that runs
past ``timeout`` seconds is cancelled (its ``cancel`` event is set, which generation checks
between tokens) and the request gets HTTP 504. :meth:`JobQueue.status` is what the page shows.

    >>> q = JobQueue(max_waiting=2, timeout=5)
    >>> q.submit("add", lambda cancel: 1 + 1).future.result()
    2
    >>> q.close()
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class Busy(RuntimeError):
    """The queue is full: try again when a job finishes."""


@dataclass
class Job:
    name: str
    fn: Callable[[threading.Event], Any]
    future: Future = field(default_factory=Future)
    cancel: threading.Event = field(default_factory=threading.Event)
    queued: float = field(default_factory=time.monotonic)


class JobQueue:
    """A single worker thread running :class:`Job` s in order (see the module docstring)."""

    def __init__(self, *, max_waiting: int = 4, timeout: float = 120.0) -> None:
        if max_waiting < 0 or timeout <= 0:
            raise ValueError("max_waiting must be >= 0 and timeout > 0")
        self.max_waiting, self.timeout = max_waiting, timeout
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._running: Job | None = None
        self._started_at = 0.0
        self.done = self.failed = self.cancelled = 0
        self._thread = threading.Thread(target=self._work, name="lmscope-serve-jobs", daemon=True)
        self._thread.start()

    def submit(self, name: str, fn: Callable[[threading.Event], Any]) -> Job:
        """Queue ``fn(cancel_event)``; :class:`Busy` if ``max_waiting`` jobs already wait."""
        job = Job(name, fn)
        with self._lock:
            if len(self._waiting) >= self.max_waiting and self._running is not None:
                raise Busy(f"the explorer is busy: {self._running.name} is running and {len(self._waiting)} job(s) "
                           "wait; try again shortly")  # fmt: skip
            self._waiting.append(job)
        self._q.put(job)
        return job

    def status(self) -> dict[str, Any]:
        with self._lock:
            running = self._running
            return {"running": running.name if running else None,
                    "running_s": round(time.monotonic() - self._started_at, 2) if running else 0.0,
                    "waiting": [j.name for j in self._waiting], "max_waiting": self.max_waiting,
                    "timeout_s": self.timeout, "done": self.done, "failed": self.failed, "cancelled": self.cancelled}  # fmt: skip

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _work(self) -> None:
        while (job := self._q.get()) is not None:
            with self._lock:
                self._waiting.remove(job)
                if job.cancel.is_set():  # its request gave up while it waited
                    job.future.cancel()
                if not job.future.set_running_or_notify_cancel():
                    self.cancelled += 1
                    continue
                self._running, self._started_at = job, time.monotonic()
            try:
                value = job.fn(job.cancel)
            except BaseException as exc:  # noqa: BLE001 - handed to the request, which reports it
                with self._lock:
                    self.failed += 1
                job.future.set_exception(exc)
            else:
                with self._lock:
                    self.done += 1
                job.future.set_result(value)
            finally:
                with self._lock:
                    self._running = None
