"""The loms HTTP API: the composition root of the api process and its routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from orderly.loms import service
from orderly.loms.domain import Item, OrderNotFoundError, SkuNotFoundError, TransitionNotAllowedError
from orderly.loms.settings import LomsSettings
from orderly.platform.http import Edge, error_body, error_response
from orderly.platform.http import create_app as platform_app
from orderly.platform.logging import configure_logging
from orderly.platform.pools import postgres_pool

PositiveId = Annotated[int, Field(strict=True, gt=0, le=2**63 - 1)]
Count = Annotated[int, Field(strict=True, gt=0, le=1_000_000)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    sku: PositiveId
    count: Count


class CreateIn(Strict):
    user: PositiveId
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


class OrderIdIn(Strict):
    orderID: PositiveId  # noqa: N815 - the course's API names it so


class SkuIn(Strict):
    sku: PositiveId


class State(TypedDict):
    pool: asyncpg.Pool


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.state.pool
    return pool


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
router = APIRouter(tags=["loms"])


@router.post("/order/create", summary="Create an order and reserve its stock")
async def create(body: CreateIn, pool: Pool) -> dict[str, int]:
    created = await service.create_order(pool=pool, user=body.user, items=[Item(i.sku, i.count) for i in body.items])
    return {"orderID": created.order_id}


@router.post("/order/pay", summary="Pay an order awaiting payment")
async def pay(body: OrderIdIn, pool: Pool) -> dict[str, Any]:
    await service.pay_order(pool=pool, order_id=body.orderID)
    return {}


@router.post("/order/cancel", summary="Cancel an order and release its reservation")
async def cancel(body: OrderIdIn, pool: Pool) -> dict[str, Any]:
    await service.cancel_order(pool=pool, order_id=body.orderID)
    return {}


@router.post("/order/info", summary="An order's status, user and items")
async def info(body: OrderIdIn, pool: Pool) -> dict[str, Any]:
    order = await service.order_info(pool=pool, order_id=body.orderID)
    return {
        "status": order.status.value,
        "user": order.user,
        "items": [{"sku": i.sku, "count": i.count} for i in order.items],
    }


@router.post("/stock/info", summary="How many units of a sku can be reserved")
async def stock(body: SkuIn, pool: Pool) -> dict[str, int]:
    return {"count": await service.stock_info(pool=pool, sku=body.sku)}


def _not_found(exc: OrderNotFoundError | SkuNotFoundError) -> JSONResponse:
    field = "sku" if isinstance(exc, SkuNotFoundError) else "orderID"
    return error_response(404, "not_found", str(exc), fields=[{"field": field, "message": str(exc)}])


def _conflict(exc: TransitionNotAllowedError) -> JSONResponse:
    body = error_body("transition_not_allowed", str(exc)) | {"status": exc.current.value}
    return JSONResponse(body, status_code=409)


def create_app() -> Edge:
    """Composition root of the api process: settings from env/file, one PostgreSQL pool for the process's life."""
    settings = LomsSettings()
    configure_logging(settings.log, process="loms-api")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        async with postgres_pool(settings.postgres) as pool:
            yield {"pool": pool}

    async def database_ready(request: Request) -> bool:
        return bool(await request.state.pool.fetchval("SELECT 1"))

    return platform_app(
        service="loms",
        lifespan=lifespan,
        routers=[router],
        readiness={"postgres": database_ready},
        description="Orders with stock reservation; every status change is published to Kafka via an outbox.",
        max_body_bytes=settings.http.max_body_bytes,
        errors={
            OrderNotFoundError: _not_found,
            SkuNotFoundError: _not_found,
            TransitionNotAllowedError: _conflict,
        },
    )
