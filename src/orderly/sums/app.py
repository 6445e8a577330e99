"""The sums API process: routes and the composition root (``create_app``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from orderly.platform.http import create_app as platform_app
from orderly.platform.http import error_response
from orderly.platform.logging import configure_logging
from orderly.platform.pools import mysql_pool, redis_client
from orderly.sums.cache import IdempotencyCache
from orderly.sums.domain import (
    InvalidInputError,
    KeyReusedError,
    RequestInProgressError,
    StorageUnavailableError,
    SumRequest,
    parse_request,
)
from orderly.sums.reference import ReferenceSums
from orderly.sums.repository import SESSION_INIT, SumStore
from orderly.sums.service import Answer, CommitBatcher, SumsService, crash_hook, purge_expired_keys
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
    state: SumsState = request.state.sums
    answer = await state.service.submit(parse_request(number=number, query_key=ikey, header_key=key))
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return Response(answer.body, media_type="application/json", headers=headers)


SUM_DOC = (
    "Add `number` (if given) to the lifetime sum and return the new sum, read in the same transaction. "
    "With an idempotency key a repeat gets the first answer again (`Idempotent-Replayed: true`)."
)
for path in ("/sum", "/test-sum-action"):
    router.add_api_route(path, _sum, methods=["GET", "POST"], summary="Add a number; get the sum", description=SUM_DOC)


async def _invalid(_request: Request, exc: InvalidInputError) -> JSONResponse:
    fields = [{"field": p.field, "message": p.message} for p in exc.problems]
    return error_response(400, "invalid_request", str(exc), fields=fields)


async def _reused(_request: Request, exc: KeyReusedError) -> JSONResponse:
    return error_response(422, "idempotency_key_reused", str(exc))


async def _in_progress(_request: Request, exc: RequestInProgressError) -> JSONResponse:
    return error_response(409, "request_in_progress", str(exc), headers={"Retry-After": str(exc.retry_after_s)})


async def _unavailable(_request: Request, exc: StorageUnavailableError) -> JSONResponse:
    return error_response(503, "storage_unavailable", str(exc), headers={"Retry-After": "1"})


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


def create_app(settings: SumsSettings | None = None) -> FastAPI:
    """Composition root of one API instance: settings, pools, the batcher, the purge job, the routes."""
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
            async with CommitBatcher(
                store=store, cache=cache, options=options, on_committed=crash_hook(options.crash_after_commit_key)
            ) as batcher:
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
        exception_handlers={
            InvalidInputError: _invalid,
            KeyReusedError: _reused,
            RequestInProgressError: _in_progress,
            StorageUnavailableError: _unavailable,
        },
    )
