"""The items HTTP API: routes turn query and body into a use-case call and its result into JSON.

``create_app`` is the API process's composition root (granian calls it in each worker).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

import asyncpg
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from orderly.items import service
from orderly.items.cache import ListCache
from orderly.items.changelog import ChangeLog, LogQuery
from orderly.items.domain import DESCRIPTION_MAX_LENGTH, NAME_MAX_LENGTH, InvalidFieldError, NotFoundError
from orderly.items.settings import ItemsSettings
from orderly.platform.http import LATENCY, REQUESTS, error_response
from orderly.platform.http import create_app as create_platform_app
from orderly.platform.logging import configure_logging
from orderly.platform.pools import clickhouse_client, postgres_pool, redis_client

M = TypeVar("M", bound=BaseModel)
NOT_FOUND_CODE = 3
MAX_PAGE = 1000
MAX_OFFSET = 2**31
LIST_PATH = "/items/list"
LIST_CACHE = Counter("items_list_cache_total", "GET /items/list answers by source", ["result"])
# Label children resolved once: ``labels()`` takes a lock and hashes its arguments on every call.
LIST_HIT, LIST_MISS = LIST_CACHE.labels("hit"), LIST_CACHE.labels("miss")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the API's routes use, opened by the lifespan and closed after it."""

    pool: asyncpg.Pool
    redis: aioredis.Redis
    cache: ListCache
    changelog: ChangeLog


def _runtime(request: Request) -> Runtime:
    items: Runtime = request.state.items
    return items


async def runtime(request: Request) -> Runtime:
    """The opened resources (async on purpose: FastAPI runs a sync dependency in a thread pool)."""
    return _runtime(request)


Rt = Annotated[Runtime, Depends(runtime)]
ItemId = Annotated[int, Query(alias="id", ge=1, le=2**63 - 1)]
CampaignId = Annotated[int, Query(alias="campaignId", ge=1, le=2**63 - 1)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Offset = Annotated[int, Query(ge=1, le=MAX_OFFSET, description="1-based position of the first row")]


class ItemBody(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH)]
    description: Annotated[str | None, Field(max_length=DESCRIPTION_MAX_LENGTH)] = None


class ReprioritizeBody(BaseModel):
    newPriority: Annotated[int, Field(ge=1, le=2**62)]  # noqa: N815 - the contract's field name


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """Parse the body as JSON whatever the Content-Type says (curl -d sends form encoding), naming bad fields."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        if not raw.strip():
            raise RequestValidationError([{"loc": ("body",), "msg": "a JSON object is required", "type": "missing"}])
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RequestValidationError(
                [{"loc": ("body",), "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]
            ) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
            ) from None

    return parse


router = APIRouter()


@router.post("/item/create", summary="Create an item at the end of the priority order")
async def create_item(
    rt: Rt, campaign_id: CampaignId, body: Annotated[ItemBody, Depends(json_body(ItemBody))]
) -> dict[str, Any]:
    item = await service.create_item(
        pool=rt.pool, cache=rt.cache, campaign_id=campaign_id, name=body.name, description=body.description
    )
    return item.to_json()


@router.patch("/item/update", summary="Change an item's name and description under a row lock")
async def update_item(
    rt: Rt, item_id: ItemId, campaign_id: CampaignId, body: Annotated[ItemBody, Depends(json_body(ItemBody))]
) -> dict[str, Any]:
    item = await service.update_item(
        pool=rt.pool,
        cache=rt.cache,
        item_id=item_id,
        campaign_id=campaign_id,
        name=body.name,
        description=body.description,
        keep_description="description" not in body.model_fields_set,
    )
    return item.to_json()


@router.delete("/item/remove", summary="Soft-delete an item")
async def remove_item(rt: Rt, item_id: ItemId, campaign_id: CampaignId) -> dict[str, Any]:
    item = await service.remove_item(pool=rt.pool, cache=rt.cache, item_id=item_id, campaign_id=campaign_id)
    return {"id": item.id, "campaignId": item.campaign_id, "removed": item.removed}


@router.patch("/item/reprioritize", summary="Give an item a priority; items at or above it move up by one")
async def reprioritize_item(
    rt: Rt,
    item_id: ItemId,
    campaign_id: CampaignId,
    body: Annotated[ReprioritizeBody, Depends(json_body(ReprioritizeBody))],
) -> dict[str, Any]:
    changed = await service.reprioritize_item(
        pool=rt.pool, cache=rt.cache, item_id=item_id, campaign_id=campaign_id, new_priority=body.newPriority
    )
    return {"priorities": [{"id": item.id, "priority": item.priority} for item in changed]}


@router.get(LIST_PATH, summary="Items by priority (cached for a minute, never stale after a write)")
async def list_items(rt: Rt, limit: Limit = 10, offset: Offset = 1) -> Response:
    # Documents the route and answers what ``ListFastPath`` hands on (HEAD, input it leaves to FastAPI's validation).
    body, hit = await service.list_items(pool=rt.pool, cache=rt.cache, limit=limit, offset=offset)
    (LIST_HIT if hit else LIST_MISS).inc()
    return Response(body, media_type="application/json", headers={"X-Cache": "hit" if hit else "miss"})


def _plain_int(value: str | None, default: int, high: int) -> int | None:
    """``value`` as an int in 1..high when it is plain ASCII digits, the default when absent; None otherwise."""
    if value is None:
        return default
    if not (0 < len(value) <= 12 and value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if 1 <= number <= high else None


def list_page(query_string: bytes) -> tuple[int, int] | None:
    """(limit, offset) of a list request whose query FastAPI would accept as it is; None to leave it to FastAPI.

    Read the way Starlette reads a query (latin-1, blanks kept, a repeated parameter: the last value). Only values
    that are plain digits in range are taken here; anything else (signs, blanks, out of range) goes to the FastAPI
    route, whose validation answers the 400 naming the field.
    """
    limit_text = offset_text = None
    if query_string:
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name == "limit":
                limit_text = value
            elif name == "offset":
                offset_text = value
    limit = _plain_int(limit_text, 10, MAX_PAGE)
    offset = _plain_int(offset_text, 1, MAX_OFFSET)
    return None if limit is None or offset is None else (limit, offset)


class ListFastPath:
    """Answers GET /items/list straight from ASGI, in front of FastAPI's middleware, routing and dependencies.

    py-spy on the loaded API showed FastAPI's layers taking about three quarters of the CPU of a cached list request;
    the use case (one Redis round trip) was the rest. This path calls the same use case with the same parameters and
    answers the same bytes and headers, counting the request under the route's template like the platform's metrics
    middleware. Other paths and methods, and any query it does not take as it is, go on to FastAPI unchanged; an
    unexpected error propagates to the platform's 500 handler.
    """

    def __init__(self, app: ASGIApp, service: str = "items") -> None:
        self.app = app
        self._latency = LATENCY.labels(service, LIST_PATH)
        self._answered = REQUESTS.labels(service, LIST_PATH, "200")
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != LIST_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        page = list_page(scope["query_string"])
        if page is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        try:
            rt: Runtime = scope["state"]["items"]
            body, hit = await service.list_items(pool=rt.pool, cache=rt.cache, limit=page[0], offset=page[1])
            (LIST_HIT if hit else LIST_MISS).inc()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-length", str(len(body)).encode()),
                        (b"content-type", b"application/json"),
                        (b"x-cache", b"hit" if hit else b"miss"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            status = 200
        finally:
            (self._answered if status == 200 else REQUESTS.labels(self._service, LIST_PATH, str(status))).inc()
            self._latency.observe(time.perf_counter() - started)


@router.get("/logs", summary="Change events from ClickHouse, newest first")
async def logs(
    rt: Rt,
    limit: Limit = 10,
    offset: Offset = 1,
    item_id: Annotated[int | None, Query(alias="itemId", ge=1)] = None,
    campaign_id: Annotated[int | None, Query(alias="campaignId", ge=1)] = None,
) -> dict[str, Any]:
    total, events = await rt.changelog.read(
        LogQuery(limit=limit, offset=offset, item_id=item_id, campaign_id=campaign_id)
    )
    return {"meta": {"total": total, "limit": limit, "offset": offset}, "logs": events}


async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
    return JSONResponse({"code": NOT_FOUND_CODE, "message": exc.message, "details": {}}, status_code=404)


async def _invalid_field(_request: Request, exc: InvalidFieldError) -> JSONResponse:
    return error_response(
        400, "invalid_request", f"invalid {exc.field}", fields=[{"field": exc.field, "message": exc.reason}]
    )


def create_app(settings: ItemsSettings | None = None) -> FastAPI:
    """The API process's composition root: settings, logging, pools, cache and change-log reader."""
    if settings is None:  # a real API process; tests pass their own settings and keep their logging
        settings = ItemsSettings()
        configure_logging(settings.log, process="items-api")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with postgres_pool(settings.postgres) as pool, redis_client(settings.redis) as redis:
            changelog = ChangeLog(clickhouse_client(settings.clickhouse), database=settings.clickhouse.database)
            cache = ListCache(redis, prefix=settings.cache_prefix, ttl_seconds=settings.items.cache_ttl_seconds)
            # Everything built so far lives as long as the process: out of the cyclic collector's reach, full
            # collections under load only walk per-request garbage (shorter pauses, steadier p99).
            gc.collect()
            gc.freeze()
            try:
                yield {"items": Runtime(pool=pool, redis=redis, cache=cache, changelog=changelog)}
            finally:
                changelog.close()

    async def postgres_ready(request: Request) -> bool:
        return bool(await _runtime(request).pool.fetchval("SELECT 1"))

    async def redis_ready(request: Request) -> bool:
        return bool(await _runtime(request).redis.ping())

    app = create_platform_app(
        service="items",
        lifespan=lifespan,
        routers=[router],
        readiness={"postgres": postgres_ready, "redis": redis_ready},
        description="CRUD on items with row locks, a never-stale list cache and a change log in ClickHouse.",
        exception_handlers={NotFoundError: _not_found, InvalidFieldError: _invalid_field},
    )
    # Added last, so it is the outermost user middleware: only Starlette's ServerErrorMiddleware runs before it.
    app.add_middleware(ListFastPath, service="items")
    return app
