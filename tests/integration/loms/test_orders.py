"""The order use cases against the real PostgreSQL: each transition, its stock effect and its outbox events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from orderly.loms import service
from orderly.loms.domain import Item, OrderNotFoundError, OrderStatus, TransitionNotAllowedError
from orderly.platform.pools import postgres_pool
from tests.loms_support import Loms, prepare
from tests.plumbing import Namespace

S = OrderStatus


@pytest.fixture(scope="module")
async def loms(namespace: Namespace) -> Loms:
    return await prepare(namespace, "orders")


@pytest.fixture(scope="module")
async def pool(loms: Loms) -> AsyncIterator[asyncpg.Pool]:
    async with postgres_pool(loms.settings.postgres.model_copy(update={"pool_max": 20})) as pool:
        yield pool


async def put_stock(pool: asyncpg.Pool, sku: int, total: int) -> None:
    await pool.execute(
        "INSERT INTO stocks (sku, total, reserved) VALUES ($1, $2, 0) "
        "ON CONFLICT (sku) DO UPDATE SET total = $2, reserved = 0",
        sku,
        total,
    )


async def order_on_fresh_stock(pool: asyncpg.Pool, user: int, lines: dict[int, tuple[int, int]]) -> service.Created:
    """Give each sku a fresh stock, then order some of each: ``lines`` maps sku → (stock total, count ordered)."""
    for sku, (total, _) in lines.items():
        await put_stock(pool, sku, total)
    items = [Item(sku, count) for sku, (_, count) in lines.items()]
    return await service.create_order(pool=pool, user=user, items=items)


async def stock_row(pool: asyncpg.Pool, sku: int) -> tuple[int, int]:
    row = await pool.fetchrow("SELECT total, reserved FROM stocks WHERE sku = $1", sku)
    return row["total"], row["reserved"]


async def events(pool: asyncpg.Pool, order_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT payload::text FROM outbox WHERE order_id = $1 ORDER BY id", order_id)
    return [json.loads(r["payload"]) for r in rows]


async def test_the_seed_stock_from_the_data_file_is_loaded(pool: asyncpg.Pool) -> None:
    assert await service.stock_info(pool=pool, sku=1001) > 0
    assert await pool.fetchval("SELECT count(*) FROM stocks") >= 20


async def test_create_reserves_all_items_and_publishes_new_then_awaiting_payment(pool: asyncpg.Pool) -> None:
    created = await order_on_fresh_stock(pool, 7, {50001: (10, 3), 50002: (5, 5)})
    assert created.status is S.AWAITING_PAYMENT
    assert await stock_row(pool, 50001) == (10, 3)
    assert await stock_row(pool, 50002) == (5, 5)
    assert await service.stock_info(pool=pool, sku=50002) == 0
    published = await events(pool, created.order_id)
    assert [e["status"] for e in published] == ["new", "awaiting payment"]
    assert published[1]["details"] == {"user": 7, "items": [{"sku": 50001, "count": 3}, {"sku": 50002, "count": 5}]}
    assert published[0]["occurred_at"] <= published[1]["occurred_at"]


async def test_create_without_enough_stock_fails_with_a_reason_and_reserves_nothing(pool: asyncpg.Pool) -> None:
    created = await order_on_fresh_stock(pool, 7, {50011: (10, 3), 50012: (1, 2)})
    assert created.status is S.FAILED
    assert await stock_row(pool, 50011) == (10, 0)
    assert await stock_row(pool, 50012) == (1, 0)
    published = await events(pool, created.order_id)
    assert [e["status"] for e in published] == ["new", "failed"]
    assert "sku 50012" in published[1]["details"]["reason"]
    with pytest.raises(TransitionNotAllowedError):
        await service.pay_order(pool=pool, order_id=created.order_id)


@pytest.mark.parametrize(
    ("transition", "sku", "stock_after", "status"),
    [
        pytest.param(service.pay_order, 50021, (6, 0), S.PAYED, id="pay-takes-the-items-out-of-the-warehouse"),
        pytest.param(service.cancel_order, 50031, (10, 0), S.CANCELLED, id="cancel-releases-the-reservation"),
    ],
)
async def test_pay_takes_the_reserved_items_out_of_the_warehouse_and_cancel_releases_them(
    pool: asyncpg.Pool,
    transition: Callable[..., Awaitable[None]],
    sku: int,
    stock_after: tuple[int, int],
    status: OrderStatus,
) -> None:
    created = await order_on_fresh_stock(pool, 1, {sku: (10, 4)})
    await transition(pool=pool, order_id=created.order_id)
    assert await stock_row(pool, sku) == stock_after
    assert (await service.order_info(pool=pool, order_id=created.order_id)).status is status
    assert [e["status"] for e in await events(pool, created.order_id)] == ["new", "awaiting payment", status]


async def test_a_refused_transition_changes_nothing_and_publishes_nothing(pool: asyncpg.Pool) -> None:
    created = await order_on_fresh_stock(pool, 1, {50041: (10, 4)})
    await service.pay_order(pool=pool, order_id=created.order_id)
    with pytest.raises(TransitionNotAllowedError) as caught:
        await service.cancel_order(pool=pool, order_id=created.order_id)
    assert caught.value.current is S.PAYED
    assert await stock_row(pool, 50041) == (6, 0)
    assert len(await events(pool, created.order_id)) == 3


async def test_unknown_order_is_reported_as_not_found(pool: asyncpg.Pool) -> None:
    for call in (service.pay_order, service.cancel_order, service.order_info):
        with pytest.raises(OrderNotFoundError):
            await call(pool=pool, order_id=10**12)


async def test_concurrent_pay_and_cancel_on_one_order_exactly_one_wins(pool: asyncpg.Pool) -> None:
    await put_stock(pool, 50051, 1000)
    for _ in range(30):
        created = await service.create_order(pool=pool, user=1, items=[Item(50051, 1)])
        results = await asyncio.gather(
            service.pay_order(pool=pool, order_id=created.order_id),
            service.cancel_order(pool=pool, order_id=created.order_id),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, TransitionNotAllowedError)]
        assert len(refused) == 1, results
        assert results.count(None) == 1
        final = (await service.order_info(pool=pool, order_id=created.order_id)).status
        assert final in (S.PAYED, S.CANCELLED)
        assert refused[0].current is final
        statuses = [e["status"] for e in await events(pool, created.order_id)]
        assert statuses == ["new", "awaiting payment", final.value]
    total, reserved = await stock_row(pool, 50051)
    assert reserved == 0
    assert total >= 970


async def test_concurrent_orders_over_shared_skus_never_oversell_or_deadlock(pool: asyncpg.Pool) -> None:
    await put_stock(pool, 50061, 25)
    await put_stock(pool, 50062, 25)

    async def order(n: int) -> OrderStatus:
        # Half the orders list the skus in one order, half in the other: lock order must not depend on it.
        items = [Item(50061, 1), Item(50062, 1)] if n % 2 else [Item(50062, 1), Item(50061, 1)]
        created = await service.create_order(pool=pool, user=n, items=items)
        if created.status is S.AWAITING_PAYMENT and n % 3 == 0:
            await service.cancel_order(pool=pool, order_id=created.order_id)
            return S.CANCELLED
        return created.status

    outcomes = await asyncio.gather(*(order(n) for n in range(80)))
    held = outcomes.count(S.AWAITING_PAYMENT)
    for sku in (50061, 50062):
        total, reserved = await stock_row(pool, sku)
        assert total == 25
        assert reserved == held
        assert reserved <= total
    assert outcomes.count(S.FAILED) > 0
