"""The HTTP app factory every service uses: health, readiness, metrics, uniform JSON errors, and the server.

Errors always have the shape ``{"error": <code>, "message": <text>, "fields": [{"field", "message"}]}`` unless a
service's contract says otherwise; validation errors name every bad field. No traceback ever reaches a client.

Every API is an ``Edge``: the outermost ASGI app, in front of the FastAPI app. It applies what every request gets
whichever way it is answered (the body cap, the request id, the request metrics, the error answers) and serves a
service's *fast routes*: hot routes answered by a plain async function instead of FastAPI's layers. A fast route
returns ``None`` for any input it does not take as it is, and the request goes on to its FastAPI twin, which stays
registered (OpenAPI schema, validation errors naming the field). See docs/architecture.md, "One fast path".
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from orderly.platform.errors import OutcomeUnknownError, Transient, classify
from orderly.platform.logging import REQUEST_ID
from orderly.platform.orphans import die_with_parent
from orderly.platform.retry import OutageLog
from orderly.platform.settings import DEFAULT_MAX_BODY_BYTES, HttpSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[Request], Awaitable[bool]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Mapping[str, Any]]]
ErrorAnswer = Callable[[Any], Response]
"""Turns one exception type into its response; the same table answers on fast routes and in FastAPI."""

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


class BodyTooLarge(StarletteHTTPException):
    """A request body over the API's cap, found while reading it: answered 413, nothing of it parsed.

    An ``HTTPException`` so that FastAPI's body parsing lets it through (it turns any other error into a 400).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)


def body_too_large_response(exc: BodyTooLarge) -> JSONResponse:
    message = str(exc.detail)
    return error_response(413, "body_too_large", message, fields=[{"field": "body", "message": message}])


PLATFORM_ERRORS: Mapping[type[Exception], ErrorAnswer] = {
    StarletteHTTPException: http_error_response,
    BodyTooLarge: body_too_large_response,
}


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
    """The answer to an exception that no entry of an API's ``ErrorAnswers`` takes, on fast routes and in FastAPI alike.

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


class ErrorAnswers:
    """One API's table of exception type → response: the platform's entries, then the service's (which win).

    Looked up along the exception's MRO, as Starlette's exception middleware does, so a subclass gets its base's
    answer unless it has its own. FastAPI gets every entry as an exception handler; the ``Edge`` answers fast routes
    from the same table, so both paths give the same bytes. Anything not in it goes to ``internal_error``.
    """

    def __init__(self, answers: Mapping[type[Exception], ErrorAnswer] | None = None) -> None:
        self.answers: dict[type[Exception], ErrorAnswer] = {**PLATFORM_ERRORS, **(answers or {})}
        self._found: dict[type[BaseException], ErrorAnswer | None] = {}

    def find(self, exc_type: type[BaseException]) -> ErrorAnswer | None:
        try:
            return self._found[exc_type]
        except KeyError:
            answer = next((self.answers[k] for k in exc_type.__mro__ if k in self.answers), None)
            self._found[exc_type] = answer
            return answer

    def respond(self, path: str, exc: Exception) -> Response:
        answer = self.find(type(exc))
        return answer(exc) if answer is not None else internal_error(path, exc)

    def handler(self, answer: ErrorAnswer) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(_request: Request, exc: Exception) -> Response:
            return answer(exc)

        return handle

    async def unhandled(self, request: Request, exc: Exception) -> Response:
        """Starlette's handler of last resort (its outermost error middleware): the table, then ``internal_error``."""
        return self.respond(request.url.path, exc)


def query_params(query_string: bytes) -> dict[str, str]:
    """A query string read as Starlette's ``QueryParams`` (what FastAPI's ``Query`` sees) reads it: decoded as latin-1,
    then percent-decoded as UTF-8 with blank values kept; a repeated parameter counts with its last value."""
    return dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


class RouteMetrics:
    """The request counter and latency histogram of an API, per route template and status.

    Label children are looked up once, since ``.labels()`` hashes and locks on every call (it showed in py-spy on the
    hot paths).
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._latency: dict[str, Any] = {}
        self._requests: dict[tuple[str, int], Any] = {}

    def observe(self, route: str, status: int, started: float) -> None:
        """Count one answer of ``route`` with ``status``, begun at ``started`` (``time.perf_counter()``)."""
        counter = self._requests.get((route, status))
        if counter is None:
            counter = self._requests[route, status] = REQUESTS.labels(self.service, route, str(status))
        counter.inc()
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = LATENCY.labels(self.service, route)
        latency.observe(time.perf_counter() - started)


Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
"""A whole response: status, body, headers (lower-case names), as a fast route returns it."""

FastHandler = Callable[[Scope, bytes], Awaitable[Answer | None]]


def answer_of(response: Response) -> Answer:
    """The status, body and headers a Starlette ``Response`` (with a body, not streaming) would send."""
    return response.status_code, bytes(response.body), response.raw_headers


def json_answer(status: int, body: bytes, *extra: tuple[bytes, bytes]) -> Answer:
    """``body`` (JSON already) with the headers ``Response(body, status, media_type="application/json")`` sends."""
    return status, body, [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json"), *extra]


@dataclass(frozen=True, slots=True)
class FastRoute:
    """One hot route answered by ``handler(scope, body)`` instead of FastAPI's layers.

    The handler parses, calls the service and returns the ``Answer``; it raises the service's exceptions as its FastAPI
    twin does (the same ``ErrorAnswers`` turns them into responses). It returns ``None`` for any input it does not take
    as it is: the request then goes on to the FastAPI route of the same method and path, with the body already read.
    ``body`` is ``b""`` unless ``reads_body``.
    """

    method: str
    path: str
    handler: FastHandler
    reads_body: bool = False


_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_REQUEST_ID_HEADER = b"x-request-id"


class Edge:
    """The outermost ASGI app of an API: what every request gets, and the service's fast routes.

    For every HTTP request, fast or not: a ``Content-Length`` over ``max_body_bytes`` is answered 413 before anything
    reads the body; a body without one (chunked) is counted while it streams and refused with 413 as soon as it passes
    the cap (``BodyTooLarge``); an ``X-Request-Id`` (up to 128 of ``A-Za-z0-9._:-``) is kept, otherwise one is made,
    and either is sent back and set on every log line of the request; the request is counted and timed under its route
    template. A fast route's answer or exception is rendered here with the API's ``ErrorAnswers`` (the uniform 500 for
    anything else); every other request, and the lifespan, goes to the FastAPI app unchanged.
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        service: str,
        errors: ErrorAnswers,
        max_body_bytes: int,
        routes: Sequence[FastRoute] = (),
    ) -> None:
        self.app, self.service, self.errors, self.max_body_bytes = app, service, errors, max_body_bytes
        self.routes = tuple(routes)
        self._routes = {(route.method, route.path): route for route in self.routes}
        self._metrics = RouteMetrics(service)
        self._paths: set[str] | None = None
        # Made ids: a random prefix per app (per process) and a counter, cheaper than a UUID per request.
        self._id_prefix, self._ids = secrets.token_hex(4).encode(), itertools.count(1)

    def without_fast_routes(self) -> Edge:
        """The same API with every request answered by FastAPI (the fast routes' twins), for parity tests."""
        return Edge(self.app, service=self.service, errors=self.errors, max_body_bytes=self.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        length, request_id = self._inspect(scope["headers"])
        token = REQUEST_ID.set(request_id.decode())
        fast = self._routes.get((scope["method"], scope["path"]))
        status, label = 500, fast.path if fast is not None else None
        try:
            if length is not None and length > self.max_body_bytes:
                # Refused before anyone reads a byte of it.
                status, label = 413, label or self._template(scope)
                await _send(send, answer_of(body_too_large_response(BodyTooLarge(self.max_body_bytes))), request_id)
                return
            if fast is not None:
                # Inline rather than a method of its own: this is the hot path, and a call layer costs here.
                body = b""
                try:
                    if fast.reads_body:
                        read = await _read_body(receive, self.max_body_bytes)
                        if read is None:
                            status = 499  # the client went away: nobody to answer
                            return
                        body = read
                    answer = await fast.handler(scope, body)
                except Exception as exc:
                    answer = answer_of(self.errors.respond(scope["path"], exc))
                if answer is not None:
                    await _send(send, answer, request_id)
                    status = answer[0]
                    return
                if fast.reads_body:  # not taken as it is: FastAPI gets the body already read
                    receive = _replay(body, receive)
            if length is None and (fast is None or not fast.reads_body):  # a body read by a fast route was capped
                receive = _capped(receive, self.max_body_bytes)
            status = await self._to_fastapi(scope, receive, send, request_id)
        finally:
            if label is None:
                label = str(getattr(scope.get("route"), "path", "unmatched"))
            self._metrics.observe(label, status, started)
            REQUEST_ID.reset(token)

    def _inspect(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[int | None, bytes]:
        """The declared body length (None when absent or not a number) and the request id, in one pass."""
        length: int | None = None
        request_id: bytes | None = None
        for name, value in headers:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == _REQUEST_ID_HEADER and request_id is None and _VALID_REQUEST_ID.fullmatch(value):
                request_id = value
        return length, request_id or b"%s-%x" % (self._id_prefix, next(self._ids))

    async def _to_fastapi(self, scope: Scope, receive: Receive, send: Send, request_id: bytes) -> int:
        status, started, finished = 500, False, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started, finished
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), (_REQUEST_ID_HEADER, request_id)]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if finished:
                # Starlette's outermost error middleware answered it from the table (``create_app`` gives it the
                # table's ``respond``) and re-raises it for the server to log; it is answered and logged already.
                return status
            if started:
                raise  # a response broke off after it started: the server must drop the connection
            answer = answer_of(self.errors.respond(scope["path"], exc))
            await _send(send, answer, request_id)
            return answer[0]
        return status

    def _template(self, scope: Scope) -> str:
        """The route template of a request answered before routing: its path if the API documents it."""
        if self._paths is None:
            self._paths = {*self.app.openapi().get("paths", {}), *(route.path for route in self.routes)}
        path: str = scope["path"]
        return path if path in self._paths else "unmatched"


async def _send(send: Send, answer: Answer, request_id: bytes) -> None:
    status, body, headers = answer
    headers = [*headers, (_REQUEST_ID_HEADER, request_id)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, refused with ``BodyTooLarge`` once it passes ``limit``; None if the client went away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def _capped(receive: Receive, limit: int) -> Receive:
    """A receive that raises ``BodyTooLarge`` as soon as the body read through it passes ``limit``."""
    size = 0

    async def capped() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BodyTooLarge(limit)
        return message

    return capped


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands FastAPI the body already read, then whatever the server says next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def create_app(
    *,
    service: str,
    lifespan: Lifespan,
    routers: Sequence[APIRouter],
    readiness: Mapping[str, ReadinessCheck] | None = None,
    description: str = "",
    errors: Mapping[type[Exception], ErrorAnswer] | None = None,
    fast_routes: Sequence[FastRoute] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Edge:
    """A service's API: its routers, /healthz, /readyz and /metrics and the error answers, behind its ``Edge``."""
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
    table = ErrorAnswers(errors)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for exc_type, answer in table.answers.items():
        app.add_exception_handler(exc_type, table.handler(answer))
    app.add_exception_handler(Exception, table.unhandled)
    return Edge(app, service=service, errors=table, max_body_bytes=max_body_bytes, routes=fast_routes)


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
