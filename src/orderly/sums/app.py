"""The sums API process: routes and the composition root (``create_app``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request as StarletteRequest
from starlette.types import ASGIApp, Receive, Scope, Send

from orderly.platform.http import RouteMetrics, error_body, error_response, internal_error, query_params
from orderly.platform.http import create_app as platform_app
from orderly.platform.logging import configure_logging
from orderly.platform.pools import mysql_pool, redis_client
from orderly.sums.cache import IdempotencyCache
from orderly.sums.domain import (
    CommitOutcomeUnknownError,
    InvalidInputError,
    KeyReusedError,
    OverloadedError,
    RequestInProgressError,
    StorageUnavailableError,
    SumRequest,
    parse_request,
)
from orderly.sums.reference import ReferenceSums
from orderly.sums.repository import SESSION_INIT, SumStore
from orderly.sums.service import Answer, CommitBatcher, SumsService, purge_expired_keys
from orderly.sums.settings import SumsOptions, SumsSettings

log = logging.getLogger(__name__)


class Submitter(Protocol):
    async def submit(self, request: SumRequest) -> Answer: ...


@dataclass(frozen=True)
class SumsState:
    service: Submitter
    store: SumStore
    cache: IdempotencyCache


router = APIRouter(tags=["sums"])

Number = Annotated[str | None, Query(description="A natural number 1 … 10^18 to add; omit to read the sum.")]
QueryKey = Annotated[str | None, Query(description="Idempotency key (1 to 255 characters).")]
HeaderKey = Annotated[
    str | None, Header(alias="Idempotency-Key", description="Idempotency key (alternative to `ikey`).")
]


async def _sum(request: Request, number: Number = None, ikey: QueryKey = None, key: HeaderKey = None) -> Response:
    # Documents the route in the OpenAPI schema; GET/POST requests are answered by ``SumFastPath`` (same logic).
    state: SumsState = request.state.sums
    return await _respond(state, number=number, ikey=ikey, key=key)


async def _respond(state: SumsState, *, number: str | None, ikey: str | None, key: str | None) -> Response:
    answer = await state.service.submit(parse_request(number=number, query_key=ikey, header_key=key))
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return Response(answer.body, media_type="application/json", headers=headers)


SUM_DOC = (
    "Add `number` (if given) to the lifetime sum and return the new sum, read in the same transaction. "
    "With an idempotency key a repeat gets the first answer again (`Idempotent-Replayed: true`)."
)
SUM_PATHS = ("/sum", "/test-sum-action")
for path in SUM_PATHS:
    router.add_api_route(path, _sum, methods=["GET", "POST"], summary="Add a number; get the sum", description=SUM_DOC)


async def _invalid(_request: Request, exc: InvalidInputError) -> JSONResponse:
    fields = [{"field": p.field, "message": p.message} for p in exc.problems]
    return error_response(400, "invalid_request", str(exc), fields=fields)


async def _reused(_request: Request, exc: KeyReusedError) -> JSONResponse:
    return error_response(422, "idempotency_key_reused", str(exc))


async def _in_progress(_request: Request, exc: RequestInProgressError) -> JSONResponse:
    return error_response(409, "request_in_progress", str(exc), headers={"Retry-After": str(exc.retry_after_s)})


async def _unavailable(_request: Request, exc: StorageUnavailableError) -> JSONResponse:
    if isinstance(exc, CommitOutcomeUnknownError):
        message = f"{exc}; send it again with the same idempotency key to learn the outcome"
        return JSONResponse(
            error_body("outcome_unknown", message) | {"dependency": "mysql"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse(
        error_body("storage_unavailable", str(exc)) | {"dependency": "mysql"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _overloaded(_request: Request, exc: OverloadedError) -> JSONResponse:
    return error_response(503, "overloaded", str(exc), headers={"Retry-After": "1"})


ErrorHandler = Callable[[Request, Any], Awaitable[JSONResponse]]
ERROR_HANDLERS: dict[type[Exception], ErrorHandler] = {
    InvalidInputError: _invalid,
    KeyReusedError: _reused,
    RequestInProgressError: _in_progress,
    StorageUnavailableError: _unavailable,
    OverloadedError: _overloaded,
}


def read_sum_inputs(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """``number``, ``ikey`` and the ``Idempotency-Key`` header, read as FastAPI's ``Query``/``Header`` read them.

    The query as the platform's ``query_params`` reads it (Starlette's rules). As Starlette's ``Headers``: the first
    header whose (lower-case, as ASGI delivers them) name matches, its value decoded as latin-1. Done by hand because
    building Starlette's ``Request``, ``QueryParams`` and ``Headers`` for three values showed up in py-spy on every
    request.
    """
    params = query_params(scope["query_string"])
    header_key = None
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            header_key = value.decode("latin-1")
            break
    return params.get("number"), params.get("ikey"), header_key


def _ok_headers(body: bytes, *, replayed: bool) -> list[tuple[bytes, bytes]]:
    # The headers Starlette's Response(body, media_type="application/json", headers=...) sends, in its order.
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    return [(b"idempotent-replayed", b"true"), *headers] if replayed else headers


_SUMS_ERRORS = tuple(ERROR_HANDLERS)


class SumFastPath:
    """Answers GET/POST /sum and /test-sum-action as the outermost ASGI app; everything else goes to FastAPI.

    py-spy on one loaded instance showed FastAPI's layers (its telemetry and body-limit wrappers, the middleware
    chain, routing, dependency solving, Request building) costing about as much CPU as the service's own work. This
    path does only what the route needs, with the same contract: inputs read as FastAPI reads them
    (``read_sum_inputs``), a 200 with the same body and headers Starlette's ``Response`` sends, the route's own
    exception handlers for 400/409/422/503, the platform's 500 body for anything unexpected (logged), and the
    platform's request counter and latency histogram under the route's template. Anything else (other methods,
    other paths, the lifespan) goes on to FastAPI unchanged.
    """

    def __init__(self, app: ASGIApp, service: str = "sums") -> None:
        self.app, self.service = app, service
        self.metrics = RouteMetrics(service, SUM_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in SUM_PATHS or scope["method"] not in ("GET", "POST"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        try:
            try:
                number, ikey, header_key = read_sum_inputs(scope)
                state: SumsState = scope["state"]["sums"]
                answer = await state.service.submit(parse_request(number=number, query_key=ikey, header_key=header_key))
            except _SUMS_ERRORS as error:
                handler = next(h for t, h in ERROR_HANDLERS.items() if isinstance(error, t))
                response = await handler(StarletteRequest(scope, receive), error)
                status = response.status_code
                await response(scope, receive, send)
                return
            except Exception as error:
                # What the platform's handler for Exception logs and answers (FastAPI's stack is not around us here).
                response = internal_error(scope["path"], error)
                await response(scope, receive, send)
                return
            status = 200
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": _ok_headers(answer.body, replayed=answer.replayed),
                }
            )
            await send({"type": "http.response.body", "body": answer.body})
        finally:
            self.metrics.observe(scope["path"], status, started)


async def _purge_loop(store: SumStore, options: SumsOptions) -> None:
    while True:
        await asyncio.sleep(options.purge_interval_s)
        try:
            deleted = await purge_expired_keys(store=store, batch=options.purge_batch)
        except StorageUnavailableError:
            log.warning("purge skipped: mysql unavailable")
            continue
        if deleted:
            log.info("purged expired idempotency keys", extra={"deleted": deleted})


def create_app(
    settings: SumsSettings | None = None, *, on_committed: Callable[[tuple[str, ...]], None] | None = None
) -> ASGIApp:
    """Composition root of one API instance: settings, pools, the batcher, the purge job, the routes.

    ``on_committed`` is called with the keys of each committed batch before their answers go to Redis (a seam for
    fault-injection tests, which compose their own app with it; the production entry point passes nothing).
    """
    settings = settings or SumsSettings()
    configure_logging(settings.log, process=f"sums-api:{settings.http.port}")
    options = settings.sums
    timeout = options.redis_timeout_ms / 1000

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        async with (
            mysql_pool(settings.mysql, init_command=SESSION_INIT) as pool,
            redis_client(settings.redis, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None) as client,
        ):
            store = SumStore(pool)
            cache = IdempotencyCache(
                client, prefix=settings.redis.key_prefix, skip_after_failure_s=options.redis_retry_after_s
            )
            async with CommitBatcher(store=store, cache=cache, options=options, on_committed=on_committed) as batcher:
                service: Submitter
                if options.mode == "reference":
                    service = ReferenceSums(
                        store=store,
                        client=client,
                        prefix=settings.redis.key_prefix,
                        ttl_s=options.key_ttl_s,
                        mark_ttl_s=max(1, math.ceil(options.in_progress_ttl_ms / 1000)),
                    )
                else:
                    service = SumsService(store=store, cache=cache, batcher=batcher, options=options)
                purge = asyncio.create_task(_purge_loop(store, options), name="sums-purge")
                # Everything built so far (modules, app, pools) lives as long as the process: move it out of the
                # cyclic collector's reach so that full collections under load only walk the per-request garbage.
                gc.collect()
                gc.freeze()
                try:
                    yield {"sums": SumsState(service=service, store=store, cache=cache)}
                finally:
                    purge.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await purge

    async def mysql_ready(request: Request) -> bool:
        state: SumsState = request.state.sums
        await state.store.current_total()
        return True

    app = platform_app(
        service="sums",
        lifespan=lifespan,
        routers=[router],
        readiness={"mysql": mysql_ready},
        description="An idempotent, race-safe lifetime sum of natural numbers.",
        exception_handlers=ERROR_HANDLERS,
    )
    return SumFastPath(app, service="sums")
