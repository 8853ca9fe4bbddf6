"""``lmscope serve``: a local explorer for result folders and a live model.

    lmscope serve outputs/ --model smollm2     # then open http://127.0.0.1:8765

It lists every result under the folder (identity, provenance, headline numbers, verdict) and
opens each one's page with interactive views (patching heatmaps, circuits as graphs, lens
grids); on the loaded model it runs the logit/tuned lens, attention patterns, a streamed
steering playground, Patchscopes and an SAE feature browser for what you type. See
``docs/serve.md``; :mod:`lmscope.serve.app` lists the routes and the guards.

:func:`start` runs the server in a background thread (tests, notebooks); :func:`serve` runs it
in the foreground until Ctrl-C.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

DEFAULT_PORT = 8765


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Running:
    """A server started by :func:`start`."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _config(results: str, model: Any, host: str, port: int, timeout: float, max_waiting: int) -> Any:
    import uvicorn

    from lmscope.serve.app import make_app

    allowed = set() if _loopback(host) else {host}
    app = make_app(results, model, timeout=timeout, max_waiting=max_waiting, allowed_hosts=allowed)
    return uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)


def start(results: str, model: Any = None, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 120.0,
          max_waiting: int = 4) -> Running:  # fmt: skip
    """Serve in a background thread (``port=0``: any free port); returns its URL and a ``stop()``."""
    import uvicorn

    if not 0 <= port < 65536:
        raise ValueError(f"port {port} is not 0..65535")
    server = uvicorn.Server(_config(results, model, host, port, timeout, max_waiting))
    thread = threading.Thread(target=server.run, name="lmscope-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the explorer did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    return Running(f"http://{host}:{bound[1]}", server, thread)


def serve(results: str, model: Any = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, timeout: float = 120.0,
          max_waiting: int = 4) -> None:  # fmt: skip
    """Serve in the foreground until Ctrl-C (``port=0``: any free port; the line printed says which)."""
    if not _loopback(host):
        print(f"lmscope serve: listening on {host}, reachable from other machines: anyone who can reach it can run "
              "the model and read every file under the results folder", file=sys.stderr)  # fmt: skip
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started with Ctrl-C ignored (a background job of a script, or a parent that ignores it): Ctrl-C and
        # `kill -INT` are how this server is documented to stop, so take SIGINT back
        signal.signal(signal.SIGINT, signal.default_int_handler)
    running = start(results, model, host=host, port=port, timeout=timeout, max_waiting=max_waiting)
    print(f"lmscope explorer on {running.url} (results {results}); Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        while running.thread.is_alive():
            running.thread.join(0.5)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        running.stop()


__all__ = ["DEFAULT_PORT", "Running", "serve", "start"]
