"""The API process: GET /ingest → 202 once the broker confirmed the persistent message."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from orderly.ingest import repository, service
from orderly.ingest.broker import Publisher, declare_queues
from orderly.ingest.domain import BrokerUnavailableError, InvalidRequestError
from orderly.ingest.settings import IngestOptions, IngestSettings
from orderly.platform.http import create_app as create_platform_app
from orderly.platform.http import error_response
from orderly.platform.logging import configure_logging
from orderly.platform.pools import postgres_pool, rabbitmq_connection

router = APIRouter()


@dataclass(frozen=True)
class ApiState:
    publisher: Publisher
    pool: asyncpg.Pool
    options: IngestOptions
    channel: Any


@router.get(
    "/ingest",
    status_code=202,
    summary="Accept integers; 202 once they are durably queued",
    description="Repeated `n` (`?n=7&n=-3`) or `numbers=7,-3` (or both); 1 to 1,000 signed 64-bit integers.",
    # The query is parsed by hand on this hot path (service.accept); the schema still describes it, for clients
    # and for the fuzzing at the edge.
    openapi_extra={
        "parameters": [
            {
                "name": "n",
                "in": "query",
                "required": False,
                "style": "form",
                "explode": True,
                "schema": {"type": "array", "items": {"type": "integer", "format": "int64"}, "maxItems": 1000},
            },
            {
                "name": "numbers",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "pattern": "^-?[0-9]+(,-?[0-9]+)*$"},
            },
        ],
        "responses": {
            "202": {"description": "Durably queued: the broker confirmed the message"},
            "400": {"description": "A parameter is missing or not a signed 64-bit integer (the body names it)"},
            "413": {"description": "More than 1,000 numbers"},
            "414": {"description": "Query string over 16 KiB"},
            "503": {"description": "The broker is unavailable; nothing was queued (Retry-After)"},
        },
    },
)
async def ingest(request: Request) -> Response:
    state: ApiState = request.state.ingest
    accepted = await service.accept(
        query=request.scope["query_string"],
        publisher=state.publisher,
        revoke=partial(repository.revoke_unconfirmed, state.pool),
        options=state.options,
    )
    body = json.dumps({"token": str(accepted.token), "numbers": list(accepted.numbers)}, separators=(",", ":"))
    return Response(body, status_code=202, media_type="application/json")


async def _invalid(_request: Request, exc: InvalidRequestError) -> JSONResponse:
    return error_response(
        exc.status, "invalid_request", exc.message, fields=[{"field": exc.field, "message": exc.message}]
    )


def create_app() -> FastAPI:
    """Composition root of the API process (granian calls it in each worker process)."""
    settings = IngestSettings()
    configure_logging(settings.log, process="ingest-api")
    options = settings.ingest

    async def _unavailable(_request: Request, _exc: BrokerUnavailableError) -> JSONResponse:
        return error_response(
            503,
            "broker_unavailable",
            "the request was not queued; retry later",
            headers={"Retry-After": str(options.retry_after_s)},
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The pool opens no connection up front: PostgreSQL is only needed to settle a lost publisher confirm.
        pg = settings.postgres.model_copy(update={"pool_min": 0, "pool_max": 2})
        async with rabbitmq_connection(settings.rabbitmq) as connection, postgres_pool(pg) as pool:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare_queues(channel, options)
            publisher = Publisher(channel, queue=options.queue, timeout=options.publish_timeout_s)
            yield {"ingest": ApiState(publisher=publisher, pool=pool, options=options, channel=channel)}

    async def broker_ready(request: Request) -> bool:
        state: ApiState = request.state.ingest
        return not state.channel.is_closed

    return create_platform_app(
        service="ingest",
        lifespan=lifespan,
        routers=[router],
        readiness={"rabbitmq": broker_ready},
        description="Numbers in, events out, in acceptance order.",
        exception_handlers={InvalidRequestError: _invalid, BrokerUnavailableError: _unavailable},
    )
