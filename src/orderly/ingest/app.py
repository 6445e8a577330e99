"""The API process: GET /ingest → 202 once the broker confirmed the persistent message."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from orderly.ingest import repository, service
from orderly.ingest.broker import Publisher, declare_queues
from orderly.ingest.domain import AcceptedRequest, BrokerUnavailableError, InvalidRequestError, OutcomeUnknownError
from orderly.ingest.settings import IngestOptions, IngestSettings
from orderly.platform.http import RouteMetrics, error_body, error_response, internal_error
from orderly.platform.http import create_app as create_platform_app
from orderly.platform.logging import configure_logging
from orderly.platform.pools import postgres_pool, rabbitmq_connection

log = logging.getLogger(__name__)

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
            "503": {
                "description": "The broker is unavailable; nothing was queued (Retry-After). Only when PostgreSQL is"
                " unreachable as well is the outcome unknown: then the error is `outcome_unknown` and the body carries"
                " the request's token, which may still come out in the events"
            },
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
    return Response(accepted_body(accepted), status_code=202, media_type="application/json")


def accepted_body(accepted: AcceptedRequest) -> bytes:
    # Integers and a UUID need no escaping: the same bytes json.dumps(..., separators=(",", ":")) gives, cheaper.
    return b'{"token":"%s","numbers":[%s]}' % (
        str(accepted.token).encode(),
        ",".join(map(str, accepted.numbers)).encode(),
    )


def _json_headers(body: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]


class FastIngest:
    """``GET /ingest`` as a plain ASGI handler in front of the FastAPI app; everything else goes to FastAPI.

    This one route is the hot path: FastAPI's middleware stack, routing and request objects cost more CPU than the
    work itself. The FastAPI route above stays registered, so the OpenAPI schema (and the fuzzing at the edge)
    describes the same contract, and any other method or path (405, 404, redirects) is still FastAPI's. The promises
    are unchanged: the same ``service.accept`` (202 only after the broker's confirm of this request's message, the
    revocation before a 503), the same error bodies as the exception handlers, the same request metrics.
    """

    def __init__(self, app: ASGIApp, holder: dict[str, ApiState], *, retry_after_s: int) -> None:
        self.app, self.holder = app, holder
        self.metrics = RouteMetrics("ingest", ["/ingest"])
        self.retry_after = (b"retry-after", str(retry_after_s).encode())
        body = _dumps(broker_unavailable_body())
        self.unavailable = (body, _json_headers(body, self.retry_after))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/ingest" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        try:
            state = self.holder["state"]
            try:
                accepted = await service.accept(
                    query=scope["query_string"],
                    publisher=state.publisher,
                    revoke=partial(repository.revoke_unconfirmed, state.pool),
                    options=state.options,
                )
            except InvalidRequestError as exc:
                status = exc.status
                fields = [{"field": exc.field, "message": exc.message}]
                body = _dumps(error_body("invalid_request", exc.message, fields))
                headers = _json_headers(body)
            except OutcomeUnknownError as exc:
                status = 503
                body = _dumps(outcome_unknown_body(exc))
                headers = _json_headers(body, self.retry_after)
            except BrokerUnavailableError:
                status = 503
                body, headers = self.unavailable
            else:
                status = 202
                body = accepted_body(accepted)
                headers = _json_headers(body)
        except Exception as exc:
            error = internal_error("/ingest", exc)
            status, body, headers = error.status_code, bytes(error.body), error.raw_headers
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe("/ingest", status, started)


def broker_unavailable_body() -> dict[str, Any]:
    return error_body("broker_unavailable", "the request was not queued; retry later") | {"dependency": "rabbitmq"}


def outcome_unknown_body(exc: OutcomeUnknownError) -> dict[str, Any]:
    message = (
        "the broker did not confirm the request and the refusal could not be recorded: it may still be stored; "
        "look for its token in the events before retrying"
    )
    return {**error_body("outcome_unknown", message), "dependency": "rabbitmq", "token": str(exc.token)}


def _dumps(value: Any) -> bytes:
    # As Starlette's JSONResponse renders it.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def _invalid(_request: Request, exc: InvalidRequestError) -> JSONResponse:
    return error_response(
        exc.status, "invalid_request", exc.message, fields=[{"field": exc.field, "message": exc.message}]
    )


def create_app() -> ASGIApp:
    """Composition root of the API process (granian calls it in each worker process)."""
    settings = IngestSettings()
    configure_logging(settings.log, process="ingest-api")
    options = settings.ingest
    holder: dict[str, ApiState] = {}  # the lifespan's state, for the plain ASGI handler

    async def _unavailable(_request: Request, exc: BrokerUnavailableError) -> JSONResponse:
        retry_after = {"Retry-After": str(options.retry_after_s)}
        if isinstance(exc, OutcomeUnknownError):
            return JSONResponse(outcome_unknown_body(exc), status_code=503, headers=retry_after)
        return JSONResponse(broker_unavailable_body(), status_code=503, headers=retry_after)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The pool opens no connection up front: PostgreSQL is only needed to settle a lost publisher confirm.
        pg = settings.postgres.model_copy(update={"pool_min": 0, "pool_max": 2})
        async with rabbitmq_connection(settings.rabbitmq) as connection, postgres_pool(pg) as pool:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare_queues(channel, options)
            publisher = Publisher(channel, queue=options.queue, timeout=options.publish_timeout_s)
            state = ApiState(publisher=publisher, pool=pool, options=options, channel=channel)
            holder["state"] = state
            try:
                yield {"ingest": state}
            finally:
                holder.pop("state", None)

    async def broker_ready(request: Request) -> bool:
        state: ApiState = request.state.ingest
        return not state.channel.is_closed

    api = create_platform_app(
        service="ingest",
        lifespan=lifespan,
        routers=[router],
        readiness={"rabbitmq": broker_ready},
        description="Numbers in, events out, in acceptance order.",
        exception_handlers={InvalidRequestError: _invalid, BrokerUnavailableError: _unavailable},
    )
    return FastIngest(api, holder, retry_after_s=options.retry_after_s)
