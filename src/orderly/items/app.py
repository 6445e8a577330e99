"""The items HTTP API: routes turn query and body into a use-case call and its result into JSON.

``create_app`` is the API process's composition root (granian calls it in each worker).
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel, Field, ValidationError
from starlette.types import Scope

from orderly.items import service
from orderly.items.cache import ListCache, SingleFlight
from orderly.items.changelog import ChangeLog, LogQuery
from orderly.items.domain import DESCRIPTION_MAX_LENGTH, NAME_MAX_LENGTH, InvalidFieldError, NotFoundError
from orderly.items.settings import ItemsOptions, ItemsSettings
from orderly.platform.http import Answer, Edge, FastRoute, answer_of, error_response, json_answer, query_params
from orderly.platform.http import create_app as create_platform_app
from orderly.platform.logging import configure_logging
from orderly.platform.pools import clickhouse_client, postgres_pool, redis_client

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
NOT_FOUND_CODE = 3
MAX_PAGE = 1000
MAX_OFFSET = 2**31
MAX_ID = 2**63 - 1
LIST_PATH, UPDATE_PATH, CREATE_PATH = "/items/list", "/item/update", "/item/create"
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
    flights: SingleFlight[bytes]
    options: ItemsOptions


def _runtime(request: Request) -> Runtime:
    items: Runtime = request.state.items
    return items


async def runtime(request: Request) -> Runtime:
    """The opened resources (async on purpose: FastAPI runs a sync dependency in a thread pool)."""
    return _runtime(request)


Rt = Annotated[Runtime, Depends(runtime)]
ItemId = Annotated[int, Query(alias="id", ge=1, le=MAX_ID)]
CampaignId = Annotated[int, Query(alias="campaignId", ge=1, le=MAX_ID)]
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


@router.post(CREATE_PATH, summary="Create an item at the end of the priority order")
async def create_item(
    rt: Rt, campaign_id: CampaignId, body: Annotated[ItemBody, Depends(json_body(ItemBody))]
) -> dict[str, Any]:
    item = await service.create_item(
        pool=rt.pool, cache=rt.cache, campaign_id=campaign_id, name=body.name, description=body.description
    )
    return item.to_json()


@router.patch(UPDATE_PATH, summary="Change an item's name and description under a row lock")
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


@router.patch("/item/reprioritize", summary="Give an item a priority; the items in its way move up by one")
async def reprioritize_item(
    rt: Rt,
    item_id: ItemId,
    campaign_id: CampaignId,
    body: Annotated[ReprioritizeBody, Depends(json_body(ReprioritizeBody))],
) -> dict[str, Any]:
    most = rt.options.reprioritize_max_moves
    changed = await service.reprioritize_item(
        pool=rt.pool,
        cache=rt.cache,
        item_id=item_id,
        campaign_id=campaign_id,
        new_priority=body.newPriority,
        max_moves=most,
    )
    return {"priorities": [{"id": item.id, "priority": item.priority} for item in changed]}


@router.get(LIST_PATH, summary="Items by priority (cached for a minute, never stale after a write)")
async def list_items(rt: Rt, limit: Limit = 10, offset: Offset = 1) -> Response:
    # Documents the route and answers what ``list_fast`` hands on (HEAD, input it leaves to FastAPI's checks).
    body, hit = await list_page_of(rt, limit, offset)
    return Response(body, media_type="application/json", headers={"X-Cache": "hit" if hit else "miss"})


async def list_page_of(rt: Runtime, limit: int, offset: int) -> tuple[bytes, bool]:
    """The list page for both paths (``list_items`` and ``list_fast``), counted as a cache hit or miss."""
    body, hit = await service.list_items(
        pool=rt.pool,
        cache=rt.cache,
        limit=limit,
        offset=offset,
        max_offset=rt.options.list_max_offset,
        flights=rt.flights,
    )
    (LIST_HIT if hit else LIST_MISS).inc()
    return body, hit


def _plain_int(value: str | None, default: int | None, high: int) -> int | None:
    """``value`` as an int in 1..high when it is plain ASCII digits, ``default`` when absent; None otherwise."""
    if value is None:
        return default
    if not (0 < len(value) <= 19 and value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if 1 <= number <= high else None


def list_page(query_string: bytes) -> tuple[int, int] | None:
    """(limit, offset) of a list request whose query FastAPI would accept as it is; None to leave it to FastAPI.

    Only values that are plain digits in range are taken here; anything else (signs, blanks, out of range) goes to
    the FastAPI route, whose validation answers the 400 naming the field. The same holds for the write queries.
    """
    values = query_params(query_string)
    limit = _plain_int(values.get("limit"), 10, MAX_PAGE)
    offset = _plain_int(values.get("offset"), 1, MAX_OFFSET)
    return None if limit is None or offset is None else (limit, offset)


def write_ids(query_string: bytes, *, with_item: bool) -> tuple[int, int] | None:
    """(item id or 0, campaign id) of a write whose query FastAPI would accept as it is; None to leave it to FastAPI."""
    values = query_params(query_string)
    campaign_id = _plain_int(values.get("campaignId"), None, MAX_ID)
    item_id = _plain_int(values.get("id"), None, MAX_ID) if with_item else 0
    return None if campaign_id is None or item_id is None else (item_id, campaign_id)


def _plain_text(value: object, low: int, high: int) -> bool:
    # pydantic refuses strings that are not valid Unicode (lone surrogates from JSON escapes): leave those to it.
    if type(value) is not str or not low <= len(value) <= high:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def item_body(raw: bytes) -> tuple[str, str | None, bool] | None:
    """(name, description, whether description was given) of a body ``ItemBody`` accepts as it is; None otherwise."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if type(data) is not dict or not _plain_text(data.get("name"), 1, NAME_MAX_LENGTH):
        return None
    description = data.get("description")
    if description is not None and not _plain_text(description, 0, DESCRIPTION_MAX_LENGTH):
        return None
    return data["name"], description, "description" in data


async def list_fast(scope: Scope, _body: bytes) -> Answer | None:
    """``GET /items/list`` as a fast route; a query FastAPI would not take as it is goes on to ``list_items``."""
    page = list_page(scope["query_string"])
    if page is None:
        return None
    body, hit = await list_page_of(scope["state"]["items"], *page)
    return json_answer(200, body, (b"x-cache", b"hit" if hit else b"miss"))


async def write_fast(scope: Scope, body: bytes) -> Answer | None:
    """``POST /item/create`` and ``PATCH /item/update`` as fast routes; input FastAPI would not take as it is goes on
    to ``create_item`` / ``update_item``."""
    creating = scope["path"] == CREATE_PATH
    ids, fields = write_ids(scope["query_string"], with_item=not creating), item_body(body)
    if ids is None or fields is None:
        return None
    rt: Runtime = scope["state"]["items"]
    (item_id, campaign_id), (name, description, described) = ids, fields
    if creating:
        item = await service.create_item(
            pool=rt.pool, cache=rt.cache, campaign_id=campaign_id, name=name, description=description
        )
    else:
        item = await service.update_item(
            pool=rt.pool,
            cache=rt.cache,
            item_id=item_id,
            campaign_id=campaign_id,
            name=name,
            description=description,
            keep_description=not described,
        )
    return answer_of(JSONResponse(item.to_json()))


# py-spy on the loaded API showed FastAPI's layers (middleware chain, routing, dependency solving, telemetry) taking
# about three quarters of the CPU of a cached list request and over half of a write's.
FAST_ROUTES = [
    FastRoute("GET", LIST_PATH, list_fast),
    FastRoute("POST", CREATE_PATH, write_fast, reads_body=True),
    FastRoute("PATCH", UPDATE_PATH, write_fast, reads_body=True),
]


@router.get("/logs", summary="Change events from ClickHouse, newest first")
async def logs(
    rt: Rt,
    limit: Limit = 10,
    offset: Offset = 1,
    item_id: Annotated[int | None, Query(alias="itemId", ge=1)] = None,
    campaign_id: Annotated[int | None, Query(alias="campaignId", ge=1)] = None,
) -> dict[str, Any]:
    if offset > rt.options.list_max_offset:
        raise InvalidFieldError("offset", f"at most {rt.options.list_max_offset}")
    total, events = await rt.changelog.read(
        LogQuery(limit=limit, offset=offset, item_id=item_id, campaign_id=campaign_id)
    )
    return {"meta": {"total": total, "limit": limit, "offset": offset}, "logs": events}


def not_found_response(exc: NotFoundError) -> JSONResponse:
    return JSONResponse({"code": NOT_FOUND_CODE, "message": exc.message, "details": {}}, status_code=404)


def invalid_field_response(exc: InvalidFieldError) -> JSONResponse:
    return error_response(
        400, "invalid_request", f"invalid {exc.field}", fields=[{"field": exc.field, "message": exc.reason}]
    )


async def _session_has_nothing_to_reset(_conn: asyncpg.Connection) -> None:
    """The pool's reset hook: the API's connections keep no session state, so returning one costs no query.

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release,
    one more round trip per request (py-spy: ~5% of the API's CPU under writes). The API takes only
    transaction-scoped advisory locks, opens no cursor outside a transaction, listens to nothing and sets nothing;
    asyncpg still rolls back a transaction left open and drops listeners before calling this hook.
    """


def create_app(settings: ItemsSettings | None = None) -> Edge:
    """The API process's composition root: settings, logging, pools, cache and change-log reader."""
    if settings is None:  # a real API process; tests pass their own settings and keep their logging
        settings = ItemsSettings()
        configure_logging(settings.log, process="items-api")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with (
            postgres_pool(settings.postgres, reset=_session_has_nothing_to_reset) as pool,
            redis_client(
                settings.redis,
                socket_timeout=settings.items.cache_timeout_seconds,
                socket_connect_timeout=settings.items.cache_timeout_seconds,
            ) as redis,
        ):
            changelog = ChangeLog(clickhouse_client(settings.clickhouse), database=settings.clickhouse.database)
            cache = ListCache(redis, prefix=settings.cache_prefix, ttl_seconds=settings.items.cache_ttl_seconds)
            # Everything built so far lives as long as the process: out of the cyclic collector's reach, full
            # collections under load only walk per-request garbage (shorter pauses, steadier p99).
            gc.collect()
            gc.freeze()
            try:
                runtime = Runtime(
                    pool=pool,
                    redis=redis,
                    cache=cache,
                    changelog=changelog,
                    flights=SingleFlight(),
                    options=settings.items,
                )
                yield {"items": runtime}
            finally:
                changelog.close()

    async def postgres_ready(request: Request) -> bool:
        return bool(await _runtime(request).pool.fetchval("SELECT 1"))

    async def redis_ready(request: Request) -> bool:
        return bool(await _runtime(request).redis.ping())

    return create_platform_app(
        service="items",
        lifespan=lifespan,
        routers=[router],
        readiness={"postgres": postgres_ready, "redis": redis_ready},
        description="CRUD on items with row locks, a never-stale list cache and a change log in ClickHouse.",
        errors={NotFoundError: not_found_response, InvalidFieldError: invalid_field_response},
        fast_routes=FAST_ROUTES,
        max_body_bytes=settings.http.max_body_bytes,
    )
