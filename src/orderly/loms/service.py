"""Use cases of loms. Each status change is one transaction: order row lock, rule check, stock change, outbox rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from orderly.loms import repository as repo
from orderly.loms.domain import (
    Item,
    Order,
    OrderNotFoundError,
    OrderStatus,
    SkuNotFoundError,
    check_transition,
    merge_items,
    order_event,
    shortage,
)
from orderly.platform.transactions import WriteTransaction


@dataclass(frozen=True)
class Created:
    order_id: int
    status: OrderStatus


async def create_order(*, pool: asyncpg.Pool, user: int, items: Sequence[Item]) -> Created:
    """Create the order as ``new`` and reserve all its items at once: ``awaiting payment``, or ``failed`` with why."""
    lines = merge_items(items)
    async with pool.acquire() as conn, WriteTransaction(conn):
        order_id = await repo.insert_order(conn, user=user, items=lines)
        order = Order(order_id, user, OrderStatus.NEW, lines)
        events = [order_event(order, OrderStatus.NEW)]
        stocks = await repo.lock_stocks(conn, [i.sku for i in lines])
        reason = shortage(lines, stocks)
        if reason is None:
            await repo.change_stock(conn, lines, reserved_by=+1)
            status = OrderStatus.AWAITING_PAYMENT
        else:
            status = OrderStatus.FAILED
        check_transition(order, status)
        await repo.set_status(conn, order_id, status)
        events.append(order_event(order, status, reason=reason))
        await repo.add_outbox(conn, events)
    return Created(order_id, status)


async def pay_order(*, pool: asyncpg.Pool, order_id: int) -> None:
    """``awaiting payment`` → ``payed``: the reserved items leave the warehouse."""
    async with pool.acquire() as conn, WriteTransaction(conn):
        order = await _locked(conn, order_id)
        check_transition(order, OrderStatus.PAYED)
        await repo.lock_stocks(conn, [i.sku for i in order.items])
        await repo.change_stock(conn, order.items, reserved_by=-1, total_by=-1)
        await repo.set_status(conn, order_id, OrderStatus.PAYED)
        await repo.add_outbox(conn, [order_event(order, OrderStatus.PAYED)])


async def cancel_order(*, pool: asyncpg.Pool, order_id: int) -> None:
    """``new`` or ``awaiting payment`` → ``cancelled``: a held reservation is released."""
    async with pool.acquire() as conn, WriteTransaction(conn):
        order = await _locked(conn, order_id)
        check_transition(order, OrderStatus.CANCELLED)
        if order.status is OrderStatus.AWAITING_PAYMENT:
            await repo.lock_stocks(conn, [i.sku for i in order.items])
            await repo.change_stock(conn, order.items, reserved_by=-1)
        await repo.set_status(conn, order_id, OrderStatus.CANCELLED)
        await repo.add_outbox(conn, [order_event(order, OrderStatus.CANCELLED)])


async def order_info(*, pool: asyncpg.Pool, order_id: int) -> Order:
    async with pool.acquire() as conn:
        order = await repo.get_order(conn, order_id)
    if order is None:
        raise OrderNotFoundError(order_id)
    return order


async def stock_info(*, pool: asyncpg.Pool, sku: int) -> int:
    """How many units of ``sku`` can still be reserved."""
    async with pool.acquire() as conn:
        stock = await repo.stock(conn, sku)
    if stock is None:
        raise SkuNotFoundError(sku)
    return stock.available


async def _locked(conn: asyncpg.Connection, order_id: int) -> Order:
    order = await repo.lock_order(conn, order_id)
    if order is None:
        raise OrderNotFoundError(order_id)
    return order
