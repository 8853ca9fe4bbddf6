"""The explorer's web app (Starlette): results, live panels, and the guards around them.

Routes (all JSON unless said): ``GET /`` the page; ``/static/<file>`` the page's own files (from
the package, never a CDN); ``/api/info``, ``/api/queue``, ``/api/results``,
``/api/result?path=``, ``/api/artifacts``; ``/files/<path>`` a file under the results folder;
``POST /api/lens``, ``/api/attention``, ``/api/patchscope``, ``/api/patch``, ``/api/sae/fires``,
``/api/sae/latent`` (model jobs) and ``/api/steer`` (a model job streamed as server-sent events).

Guards: the server binds 127.0.0.1 unless told otherwise; a request whose ``Host`` is not the
address it was started on is refused (DNS rebinding); POST bodies must be JSON and at most
64 KB; paths go through :class:`~lmscope.serve.files.Root`; model work goes through one
:class:`~lmscope.serve.jobs.JobQueue` (one job at a time, a bounded queue, a time limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lmscope.serve.files import Forbidden, Root
from lmscope.serve.jobs import Busy, JobQueue
from lmscope.serve.live import Live

MAX_BODY = 64 * 1024
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "views.js": "text/javascript",
          "app.css": "text/css", "views.css": "text/css"}  # fmt: skip
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
FILE_CSP = ("sandbox allow-scripts; default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'")


class Timeout(RuntimeError):
    pass


def _error(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status)


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Busy):
        return 503
    if isinstance(exc, Timeout):
        return 504
    if isinstance(exc, (ValueError, FileNotFoundError, KeyError, TypeError, NotImplementedError)):
        return 400
    return 500


def make_app(results: str, model: Any = None, *, timeout: float = 120.0, max_waiting: int = 4,
             allowed_hosts: set[str] | None = None) -> Starlette:  # fmt: skip
    """The explorer for the results folder ``results`` and (optionally) a loaded lmscope Model."""
    root = Root(results)
    jobs = JobQueue(max_waiting=max_waiting, timeout=timeout)
    live = Live(model, root) if model is not None else None
    hosts = LOCAL_HOSTS | (allowed_hosts or set())

    def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            host = hostname(request.headers.get("host") or "")
            if host not in hosts:
                return _error(403, f"host {host!r} is not this explorer's address")
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every error becomes a clear JSON answer
                return _error(_status_of(exc), str(exc) or type(exc).__name__)

        return run

    async def body(request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ValueError("send the request body as application/json")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ValueError(f"request body over {MAX_BODY} bytes")
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("the body must be a JSON object")
        return doc

    def need_model() -> Live:
        if live is None:
            raise NotImplementedError("no model is loaded: start `lmscope serve` with --model (or without --no-model)")
        return live

    async def job(name: str, fn: Callable[[threading.Event], Any]) -> Any:
        j = jobs.submit(name, fn)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(j.future)), timeout)
        except asyncio.TimeoutError:
            j.cancel.set()
            raise Timeout(f"{name} ran past the {timeout:g} s limit and was cancelled") from None

    # ---- pages and files --------------------------------------------------------------------------
    async def index(request: Request) -> Response:
        return static_file("index.html")

    def static_file(name: str) -> Response:
        if name not in STATIC:
            return _error(404, "no such file")
        package = "lmscope.experiments" if name.startswith("views.") else "lmscope.serve"  # the views are shared with notebooks
        text = resources.files(package).joinpath(f"static/{name}").read_bytes()
        return Response(text, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    async def static(request: Request) -> Response:
        return static_file(request.path_params["name"])

    async def files(request: Request) -> Response:
        path = root.resolve(request.path_params["path"])
        if not path.is_file():
            return _error(404, f"no file {request.path_params['path']!r} under the results folder")
        headers = {"X-Content-Type-Options": "nosniff"}
        if path.suffix in (".html", ".htm", ".svg"):
            headers["Content-Security-Policy"] = FILE_CSP
        return FileResponse(path, headers=headers)

    # ---- data -----------------------------------------------------------------------------------------
    async def api_info(request: Request) -> Response:
        return JSONResponse({"results": str(root.path), "model": live.info() if live else None, "queue": jobs.status()})

    async def api_queue(request: Request) -> Response:
        return JSONResponse(jobs.status())

    async def api_results(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(root.results))

    async def api_result(request: Request) -> Response:
        path = request.query_params.get("path")
        if not path:
            raise ValueError("give ?path=<result folder>")
        return JSONResponse(json.loads(json.dumps(root.result(path), default=str)))

    async def api_artifacts(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(root.artifacts))

    # ---- live panels ----------------------------------------------------------------------------------
    def model_route(name: str, call: Callable[[Live, dict[str, Any]], Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            lv = need_model()
            args = await body(request)
            return JSONResponse(await job(name, lambda cancel: call(lv, args)))

        return handler

    async def api_steer(request: Request) -> Response:
        lv = need_model()
        args = await body(request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def emit(ev: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ev)

        checked = await job("steer check", lambda cancel: lv.steer_args(args))  # bad input: a 400 before anything streams
        j = jobs.submit("steer", lambda cancel: lv.steer_pair(checked, emit, cancel))
        j.future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, None))

        async def stream() -> Any:
            deadline = loop.time() + timeout
            try:
                while True:
                    try:
                        ev = await asyncio.wait_for(events.get(), max(0.01, deadline - loop.time()))
                    except asyncio.TimeoutError:
                        j.cancel.set()
                        yield _sse({"error": f"steer ran past the {timeout:g} s limit and was cancelled"})
                        return
                    if ev is None:
                        break
                    yield _sse(ev)
                if j.future.cancelled():
                    yield _sse({"error": "cancelled"})
                elif (exc := j.future.exception()) is not None:
                    yield _sse({"error": str(exc) or type(exc).__name__})
                else:
                    yield _sse({"done": True, **j.future.result()})
            finally:
                j.cancel.set()  # the client went away, or the stream ended: stop generating

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", guarded(index)),
        Route("/static/{name}", guarded(static)),
        Route("/files/{path:path}", guarded(files)),
        Route("/api/info", guarded(api_info)),
        Route("/api/queue", guarded(api_queue)),
        Route("/api/results", guarded(api_results)),
        Route("/api/result", guarded(api_result)),
        Route("/api/artifacts", guarded(api_artifacts)),
        Route("/api/lens", guarded(model_route("lens", lambda lv, a: lv.lens(a.get("prompt"), a.get("target"), a.get("tuned")))),
              methods=["POST"]),
        Route("/api/attention", guarded(model_route("attention", lambda lv, a: lv.attention(a.get("prompt"), a.get("layer")))),
              methods=["POST"]),
        Route("/api/patchscope", guarded(model_route("patchscope", lambda lv, a: lv.patchscope(
            a.get("prompt"), a.get("preset", "identity"), a.get("layers"), a.get("max_new_tokens", 8)))), methods=["POST"]),
        Route("/api/sae/fires", guarded(model_route("sae fires", lambda lv, a: lv.sae_fires(a.get("sae"), a.get("text")))),
              methods=["POST"]),
        Route("/api/sae/latent", guarded(model_route("sae latent", lambda lv, a: lv.sae_latent(a.get("sae"), a.get("latent")))),
              methods=["POST"]),
        Route("/api/patch", guarded(model_route("patch", lambda lv, a: lv.patch(a))), methods=["POST"]),
        Route("/api/steer", guarded(api_steer), methods=["POST"]),
    ]  # fmt: skip
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        jobs.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.jobs, app.state.live, app.state.root = jobs, live, root
    return app


def hostname(host: str) -> str:
    """The name part of a Host header ("127.0.0.1:8765" -> "127.0.0.1", "[::1]:80" -> "[::1]")."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0]


def _sse(doc: dict[str, Any]) -> str:
    return f"data: {json.dumps(doc)}\n\n"
