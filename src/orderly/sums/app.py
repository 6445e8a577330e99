"""The sums API process: routes and the composition root (``create_app``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Scope

from orderly.platform import http
from orderly.platform.http import Edge, ErrorAnswer, FastRoute, error_body, error_response, json_answer, query_params
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
    # The FastAPI twin of ``sum_fast``: it documents the route in the OpenAPI schema and answers what that one hands
    # on (nothing today); tests/unit/test_fast_path_parity.py proves the two answer alike.
    state: SumsState = request.state.sums
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


def invalid_response(exc: InvalidInputError) -> JSONResponse:
    fields = [{"field": p.field, "message": p.message} for p in exc.problems]
    return error_response(400, "invalid_request", str(exc), fields=fields)


def reused_response(exc: KeyReusedError) -> JSONResponse:
    return error_response(422, "idempotency_key_reused", str(exc))


def in_progress_response(exc: RequestInProgressError) -> JSONResponse:
    return error_response(409, "request_in_progress", str(exc), headers={"Retry-After": str(exc.retry_after_s)})


def unavailable_response(exc: StorageUnavailableError) -> JSONResponse:
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


def overloaded_response(exc: OverloadedError) -> JSONResponse:
    return error_response(503, "overloaded", str(exc), headers={"Retry-After": "1"})


ERRORS: dict[type[Exception], ErrorAnswer] = {
    InvalidInputError: invalid_response,
    KeyReusedError: reused_response,
    RequestInProgressError: in_progress_response,
    StorageUnavailableError: unavailable_response,
    OverloadedError: overloaded_response,
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


_REPLAYED = (b"idempotent-replayed", b"true")


async def sum_fast(scope: Scope, _body: bytes) -> http.Answer:
    """``GET|POST /sum`` and ``/test-sum-action`` as fast routes (py-spy: FastAPI's layers cost about as much CPU per
    request as the service itself); the inputs are read as FastAPI reads them (``read_sum_inputs``)."""
    number, ikey, header_key = read_sum_inputs(scope)
    state: SumsState = scope["state"]["sums"]
    answer = await state.service.submit(parse_request(number=number, query_key=ikey, header_key=header_key))
    return json_answer(200, answer.body, _REPLAYED) if answer.replayed else json_answer(200, answer.body)


FAST_ROUTES = [FastRoute(method, path, sum_fast) for path in SUM_PATHS for method in ("GET", "POST")]


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
) -> Edge:
    """Composition root of one API instance: settings, pools, the batcher, the purge job, the routes.

    ``on_committed`` is called with the keys of each committed batch before their answers go to Redis (a seam for
    fault-injection tests, which compose their own app with it; the production entry point passes nothing).
    """
    if settings is None:  # a real API process; tests pass their own settings and keep their logging
        settings = SumsSettings()
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

    return platform_app(
        service="sums",
        lifespan=lifespan,
        routers=[router],
        readiness={"mysql": mysql_ready},
        description="An idempotent, race-safe lifetime sum of natural numbers.",
        errors=ERRORS,
        fast_routes=FAST_ROUTES,
        max_body_bytes=settings.http.max_body_bytes,
    )
