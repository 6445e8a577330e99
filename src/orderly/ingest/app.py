"""The API process: GET /ingest → 202 once the broker confirmed the persistent message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Scope

from orderly.ingest import repository, service
from orderly.ingest.broker import Publisher, declare_queues
from orderly.ingest.domain import (
    AcceptedRequest,
    BrokerNotConnectedError,
    BrokerUnavailableError,
    InvalidRequestError,
    OutcomeUnknownError,
)
from orderly.ingest.service import RequestPublisher
from orderly.ingest.settings import IngestOptions, IngestSettings
from orderly.platform.errors import Permanent, Transient, classify
from orderly.platform.http import Answer, Edge, ErrorAnswer, FastRoute, error_body, error_response, json_answer
from orderly.platform.http import create_app as create_platform_app
from orderly.platform.lifecycle import Shutdown
from orderly.platform.logging import configure_logging
from orderly.platform.pools import postgres_pool, rabbitmq_connection
from orderly.platform.retry import Retry
from orderly.platform.settings import RabbitMQSettings

log = logging.getLogger(__name__)

router = APIRouter()


@dataclass
class ApiState:
    """What the requests of one API process share. ``publisher`` and ``channel`` are set once the broker answered
    (see ``broker_link``); until then ``publisher`` refuses every request with 503 and nothing is sent."""

    publisher: RequestPublisher
    pool: asyncpg.Pool
    options: IngestOptions
    channel: Any


class NotConnected:
    """The publisher of an API whose broker has not answered since the process started."""

    async def publish(self, request: AcceptedRequest) -> None:  # noqa: ARG002 - the RequestPublisher protocol
        raise BrokerNotConnectedError("not connected to rabbitmq yet")


BROKER_RETRY_CAP_S = 5.0  # the longest wait between two attempts to reach a broker that was down at start


@asynccontextmanager
async def broker_link(state: ApiState, rabbitmq: RabbitMQSettings) -> AsyncIterator[None]:
    """Connect the API to RabbitMQ (queues declared, a channel with publisher confirms), and keep the connection for
    the life of the block.

    When the broker is away at start (a transient fault), the process starts anyway: requests are answered 503
    ``broker_unavailable`` and ``/readyz`` is 503 while a background task connects with backoff (one log line when
    the broker is found down, one when it is back). A supervisor restarting the API during a broker outage therefore
    does not see it crash-loop. A permanent fault (credentials refused) still stops the process at start. Once
    connected, aio-pika's robust connection rides through later broker restarts.
    """
    async with contextlib.AsyncExitStack() as kept:

        async def connect() -> None:
            async with contextlib.AsyncExitStack() as attempt:
                connection = await attempt.enter_async_context(rabbitmq_connection(rabbitmq))
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await declare_queues(channel, state.options)
                kept.push_async_callback(attempt.pop_all().aclose)
            state.channel = channel
            state.publisher = Publisher(channel, queue=state.options.queue, timeout=state.options.publish_timeout_s)

        stop = Shutdown()
        retry = Retry(stop, dependency="rabbitmq", cap=BROKER_RETRY_CAP_S, logger=log)
        try:
            await connect()
        except Exception as exc:
            fault = classify(exc, dependency="rabbitmq")
            if not isinstance(fault, Transient):
                raise
            retry.failed(fault)
            task = asyncio.create_task(_connect_in_background(connect, retry))
            kept.push_async_callback(_stopped, task, stop)
        yield


async def _connect_in_background(connect: Callable[[], Awaitable[None]], retry: Retry) -> None:
    refused = ""  # the refusal logged last: a permanent fault is logged when it first shows, not on every attempt
    while not await retry.shutdown.sleep(retry.next_delay()):
        try:
            await connect()
        except Exception as exc:
            fault = classify(exc, dependency="rabbitmq")
            if isinstance(fault, Transient):
                retry.failed(fault)
            elif fault.reason != refused:
                # Nobody to raise to any more: the API goes on answering 503, and names the fix once.
                refused = fault.reason
                text = fault.message if isinstance(fault, Permanent) else fault.reason
                log.error("rabbitmq refused the API: %s; retrying", text, extra={"error": fault.reason})  # noqa: TRY400
            continue
        retry.ok()
        return


async def _stopped(task: asyncio.Task[None], stop: Shutdown) -> None:
    """Stop connecting: the wait ends at once, and an attempt under way is cancelled (its connection closed)."""
    stop.request("the API is stopping")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
    # The FastAPI twin of ``accept_fast`` (same use case, same answer): it documents the route in the OpenAPI schema,
    # and tests/unit/test_fast_path_parity.py proves the two answer alike.
    state: ApiState = request.state.ingest
    accepted = await _accept(state, request.scope["query_string"])
    return Response(accepted_body(accepted), status_code=202, media_type="application/json")


async def accept_fast(scope: Scope, _body: bytes) -> Answer:
    """``GET /ingest`` as a fast route (the hot path: FastAPI's layers cost more CPU than the work itself)."""
    state: ApiState = scope["state"]["ingest"]
    return json_answer(202, accepted_body(await _accept(state, scope["query_string"])))


async def _accept(state: ApiState, query: bytes) -> AcceptedRequest:
    revoke = partial(repository.revoke_unconfirmed, state.pool)
    return await service.accept(query=query, publisher=state.publisher, revoke=revoke, options=state.options)


FAST_ROUTES = [FastRoute("GET", "/ingest", accept_fast)]


def accepted_body(accepted: AcceptedRequest) -> bytes:
    # Integers and a UUID need no escaping: the same bytes json.dumps(..., separators=(",", ":")) gives, cheaper.
    return b'{"token":"%s","numbers":[%s]}' % (
        str(accepted.token).encode(),
        ",".join(map(str, accepted.numbers)).encode(),
    )


def broker_unavailable_body() -> dict[str, Any]:
    return error_body("broker_unavailable", "the request was not queued; retry later") | {"dependency": "rabbitmq"}


def outcome_unknown_body(exc: OutcomeUnknownError) -> dict[str, Any]:
    message = (
        "the broker did not confirm the request and the refusal could not be recorded: it may still be stored; "
        "look for its token in the events before retrying"
    )
    return {**error_body("outcome_unknown", message), "dependency": "rabbitmq", "token": str(exc.token)}


def invalid_response(exc: InvalidRequestError) -> JSONResponse:
    return error_response(
        exc.status, "invalid_request", exc.message, fields=[{"field": exc.field, "message": exc.message}]
    )


def error_answers(options: IngestOptions) -> dict[type[Exception], ErrorAnswer]:
    """The service's errors as responses, on the fast route and in FastAPI alike."""
    retry_after = {"Retry-After": str(options.retry_after_s)}

    def unavailable(exc: BrokerUnavailableError) -> JSONResponse:
        if isinstance(exc, OutcomeUnknownError):
            return JSONResponse(outcome_unknown_body(exc), status_code=503, headers=retry_after)
        return JSONResponse(broker_unavailable_body(), status_code=503, headers=retry_after)

    return {InvalidRequestError: invalid_response, BrokerUnavailableError: unavailable}


def create_app(settings: IngestSettings | None = None) -> Edge:
    """Composition root of the API process (granian calls it in each worker process)."""
    if settings is None:  # a real API process; tests pass their own settings and keep their logging
        settings = IngestSettings()
        configure_logging(settings.log, process="ingest-api")
    options = settings.ingest
    pg = settings.postgres.model_copy(update={"pool_min": 0, "pool_max": 2})
    rabbitmq = settings.rabbitmq

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The pool opens no connection up front: PostgreSQL is only needed to settle a lost publisher confirm.
        async with postgres_pool(pg) as pool:
            state = ApiState(publisher=NotConnected(), pool=pool, options=options, channel=None)
            async with broker_link(state, rabbitmq):
                yield {"ingest": state}

    async def broker_ready(request: Request) -> bool:
        state: ApiState = request.state.ingest
        return state.channel is not None and not state.channel.is_closed

    return create_platform_app(
        service="ingest",
        lifespan=lifespan,
        routers=[router],
        readiness={"rabbitmq": broker_ready},
        description="Numbers in, events out, in acceptance order.",
        errors=error_answers(options),
        fast_routes=FAST_ROUTES,
        max_body_bytes=settings.http.max_body_bytes,
    )
