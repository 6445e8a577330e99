"""The HTTP app factory every service uses: health, readiness, metrics, uniform JSON errors, and the server.

Errors always have the shape ``{"error": <code>, "message": <text>, "fields": [{"field", "message"}]}`` unless a
service's contract says otherwise; validation errors name every bad field. No traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderly.platform.errors import OutcomeUnknownError, Transient, classify
from orderly.platform.orphans import die_with_parent
from orderly.platform.retry import OutageLog
from orderly.platform.settings import HttpSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[Request], Awaitable[bool]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Mapping[str, Any]]]

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["service", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def error_body(error: str, message: str, fields: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    return {"error": error, "message": message, "fields": list(fields)}


def error_response(
    status: int,
    error: str,
    message: str,
    *,
    fields: Sequence[Mapping[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(error, message, fields), status_code=status, headers=dict(headers or {}))


def _field_name(loc: Sequence[Any]) -> str:
    # ("query", "n", 3) -> "n[3]"; ("body", "items", 0, "sku") -> "items[0].sku"; the source part says little.
    parts = [p for p in loc if p not in ("query", "body", "path", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [{"field": _field_name(e.get("loc", ())), "message": str(e.get("msg", "invalid"))} for e in exc.errors()]
    names = ", ".join(dict.fromkeys(f["field"] for f in fields))
    return error_response(400, "invalid_request", f"invalid {names}", fields=fields)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)


RETRY_AFTER_S = 1
READINESS_TIMEOUT_S = 5.0  # a dependency that does not answer a probe within this is not ready
# One line when a dependency starts failing requests, not one per request (see OutageLog).
_outages = OutageLog(logger=log)


def unavailable_response(dependency: str) -> JSONResponse:
    """503 with Retry-After: ``dependency`` is down or restarting and nothing was done."""
    body = error_body("dependency_unavailable", f"{dependency} is unavailable; retry later") | {
        "dependency": dependency
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def outcome_unknown_response(dependency: str) -> JSONResponse:
    """503 with Retry-After for a write whose commit was cut off: it may or may not have been applied."""
    message = (
        f"the connection to {dependency} broke while the write was being committed: it may have been applied; "
        "read before retrying"
    )
    body = error_body("outcome_unknown", message) | {"dependency": dependency}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def internal_error(path: str, exc: BaseException) -> JSONResponse:
    """The answer to an error that no handler of the service took (the FastAPI app and the fast paths alike).

    An outage is not a bug: a transient fault of a dependency answers 503 naming it (``dependency_unavailable``, or
    ``outcome_unknown`` when a commit was cut off), with Retry-After, so that a client knows to retry. Anything else
    is logged with its traceback and answered with the uniform 500 (nothing of it reaches the client).
    """
    if isinstance(exc, OutcomeUnknownError):
        _outages.note(exc.dependency, exc, f"answering 503 outcome_unknown ({path})")
        return outcome_unknown_response(exc.dependency)
    fault = classify(exc)
    if isinstance(fault, Transient):
        _outages.note(fault.dependency, exc, "answering 503")
        return unavailable_response(fault.dependency)
    log.error("unhandled error", exc_info=exc, extra={"path": path, "error_type": type(exc).__name__})
    return error_response(500, "internal_error", "internal error; see the server log")


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    return internal_error(request.url.path, exc)


def query_params(query_string: bytes) -> dict[str, str]:
    """A query string read as Starlette's ``QueryParams`` (what FastAPI's ``Query`` sees) reads it: decoded as latin-1,
    then percent-decoded as UTF-8 with blank values kept; a repeated parameter counts with its last value."""
    return dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


class RouteMetrics:
    """The request counter and latency histogram of some routes, for handlers that answer outside FastAPI's stack.

    Counts under the same names and labels as ``MetricsMiddleware``; label children are looked up once, since
    ``.labels()`` hashes and locks on every call (it showed in py-spy on the hot paths).
    """

    def __init__(self, service: str, routes: Sequence[str]) -> None:
        self.service = service
        self._latency = {route: LATENCY.labels(service, route) for route in routes}
        self._requests: dict[tuple[str, int], Any] = {}

    def observe(self, route: str, status: int, started: float) -> None:
        """Count one answer of ``route`` with ``status``, begun at ``started`` (``time.perf_counter()``)."""
        counter = self._requests.get((route, status))
        if counter is None:
            counter = self._requests[route, status] = REQUESTS.labels(self.service, route, str(status))
        counter.inc()
        self._latency[route].observe(time.perf_counter() - started)


class ErrorMiddleware:
    """Answers an exception that no handler took with ``internal_error`` (503 for an outage, else 500).

    It sits inside the metrics middleware, so the status counted is the one the client got, and the exception goes no
    further: Starlette's outermost error middleware would re-raise it to the server, which logs every one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise
            await internal_error(scope["path"], exc)(scope, receive, send)


class MetricsMiddleware:
    """Counts and times requests per route template; a plain ASGI middleware to keep the hot path cheap."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(self.service, route, str(status)).inc()
            LATENCY.labels(self.service, route).observe(time.perf_counter() - started)


def create_app(
    *,
    service: str,
    lifespan: Lifespan,
    routers: Sequence[APIRouter],
    readiness: Mapping[str, ReadinessCheck] | None = None,
    description: str = "",
    exception_handlers: Mapping[type[Exception], Callable[[Request, Any], Awaitable[Response]]] | None = None,
) -> FastAPI:
    """Build a service's FastAPI app: its routers plus /healthz, /readyz and /metrics, and the error mapping."""
    app = FastAPI(title=f"orderly {service}", description=description, lifespan=lifespan)
    checks = dict(readiness or {})

    @app.get("/healthz", tags=["platform"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["platform"], summary="Every dependency answers")
    async def readyz(request: Request) -> JSONResponse:
        results: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                results[name] = await asyncio.wait_for(check(request), READINESS_TIMEOUT_S)
            except Exception:
                results[name] = False
        ready = all(results.values())
        headers = None if ready else {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503, headers=headers)

    @app.get("/metrics", tags=["platform"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type, handler in (exception_handlers or {}).items():
        app.add_exception_handler(exc_type, handler)
    app.add_exception_handler(Exception, _unhandled)
    app.add_middleware(ErrorMiddleware)
    app.add_middleware(MetricsMiddleware, service=service)
    return app


def serve(factory: str, http: HttpSettings, *, process_name: str) -> None:
    """Serve an app factory (``"module:function"``) with granian on uvloop; blocks until a signal stops it.

    Worker processes build their own app from the environment, so command-line flags reach them as ``ORDERLY_*``
    variables set before this call.
    """
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        target=factory,
        factory=True,
        address=http.host,
        port=http.port,
        interface=Interfaces.ASGI,
        workers=http.workers,
        loop=Loops.uvloop,
        log_enabled=False,
        backlog=2048,
        # granian refuses a process name unless its optional setproctitle extra is installed.
        process_name=process_name if importlib.util.find_spec("setproctitle") else None,
        respawn_failed_workers=True,
        workers_kill_timeout=10,
    ).serve(target_loader=load_app_in_worker)


def load_app_in_worker(target: str) -> Any:
    """granian's target loader, called in each worker process: tie the worker's life to its parent, build the app.

    A worker is a child of granian's main process. If that process dies, even by ``kill -9``, the kernel kills the
    worker too (``PR_SET_PDEATHSIG``), so no orphan keeps serving the port beside a restarted API.
    """
    import multiprocessing

    parent = multiprocessing.parent_process()
    die_with_parent(signal.SIGKILL, parent_pid=parent.pid if parent is not None else None)
    module_name, _, factory_name = target.partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    return factory()


def export_to_environment(prefix: str, values: Mapping[str, object | None]) -> None:
    """Hand command-line values to worker processes as environment variables (flags win over env and file)."""
    for key, value in values.items():
        if value is not None:
            os.environ[f"{prefix}{key.upper()}"] = str(value)
