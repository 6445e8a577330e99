"""SQL of loms: orders, items, stocks and the outbox. Every function runs on a connection the caller holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

import asyncpg

from orderly.loms.domain import Item, Order, OrderStatus, Stock


async def insert_order(conn: asyncpg.Connection, *, user: int, items: Sequence[Item]) -> int:
    order_id: int = await conn.fetchval(
        "INSERT INTO orders (user_id, status) VALUES ($1, $2) RETURNING id", user, OrderStatus.NEW.value
    )
    await conn.executemany(
        "INSERT INTO order_items (order_id, sku, count) VALUES ($1, $2, $3)",
        [(order_id, i.sku, i.count) for i in items],
    )
    return order_id


async def _items(conn: asyncpg.Connection, order_id: int) -> tuple[Item, ...]:
    rows = await conn.fetch("SELECT sku, count FROM order_items WHERE order_id = $1 ORDER BY sku", order_id)
    return tuple(Item(r["sku"], r["count"]) for r in rows)


async def lock_order(conn: asyncpg.Connection, order_id: int) -> Order | None:
    """The order with its row locked until the transaction ends (a concurrent transition waits here)."""
    row = await conn.fetchrow("SELECT id, user_id, status FROM orders WHERE id = $1 FOR UPDATE", order_id)
    if row is None:
        return None
    return Order(row["id"], row["user_id"], OrderStatus(row["status"]), await _items(conn, order_id))


async def get_order(conn: asyncpg.Connection, order_id: int) -> Order | None:
    row = await conn.fetchrow("SELECT id, user_id, status FROM orders WHERE id = $1", order_id)
    if row is None:
        return None
    return Order(row["id"], row["user_id"], OrderStatus(row["status"]), await _items(conn, order_id))


async def set_status(conn: asyncpg.Connection, order_id: int, status: OrderStatus) -> None:
    await conn.execute("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1", order_id, status.value)


async def lock_stocks(conn: asyncpg.Connection, skus: Sequence[int]) -> dict[int, Stock]:
    """Stock rows locked in sku order: every transaction takes them in the same order, so none deadlock."""
    rows = await conn.fetch(
        "SELECT sku, total, reserved FROM stocks WHERE sku = ANY($1::bigint[]) ORDER BY sku FOR UPDATE",
        sorted(set(skus)),
    )
    return {r["sku"]: Stock(r["sku"], r["total"], r["reserved"]) for r in rows}


async def change_stock(conn: asyncpg.Connection, items: Sequence[Item], *, reserved_by: int, total_by: int = 0) -> None:
    """Add ``reserved_by * count`` to reserved and ``total_by * count`` to total of each item's sku.

    The table's CHECK constraints refuse any result below zero or above total, so a bug fails the transaction
    instead of corrupting the stock.
    """
    await conn.execute(
        """UPDATE stocks AS s
              SET reserved = s.reserved + $3 * v.count, total = s.total + $4 * v.count
             FROM unnest($1::bigint[], $2::bigint[]) AS v(sku, count)
            WHERE s.sku = v.sku""",
        [i.sku for i in items],
        [i.count for i in items],
        reserved_by,
        total_by,
    )


async def stock(conn: asyncpg.Connection, sku: int) -> Stock | None:
    row = await conn.fetchrow("SELECT sku, total, reserved FROM stocks WHERE sku = $1", sku)
    return None if row is None else Stock(row["sku"], row["total"], row["reserved"])


async def add_outbox(conn: asyncpg.Connection, events: Sequence[dict[str, Any]]) -> None:
    await conn.executemany(
        "INSERT INTO outbox (event_id, order_id, status, payload) VALUES ($1::uuid, $2, $3, $4::jsonb)",
        [(e["event_id"], e["order_id"], e["status"], json.dumps(e)) for e in events],
    )


def seed_stocks_data() -> list[dict[str, int]]:
    text = resources.files("orderly.loms").joinpath("migrations", "postgres", "stocks.json").read_text("utf-8")
    data: list[dict[str, int]] = json.loads(text)
    return data


async def seed_stocks(conn: asyncpg.Connection, stocks: Sequence[dict[str, int]]) -> int:
    """Insert the seed stock rows that are missing (an existing row keeps its live figures); returns rows added."""
    result: str = await conn.execute(
        """INSERT INTO stocks (sku, total, reserved)
           SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
           ON CONFLICT (sku) DO NOTHING""",
        [s["sku"] for s in stocks],
        [s["total"] for s in stocks],
        [s.get("reserved", 0) for s in stocks],
    )
    return int(result.rsplit(" ", 1)[-1])


async def outbox_backlog(conn: asyncpg.Connection) -> tuple[int, float]:
    """Outbox rows waiting for the relay, and the age in seconds of the oldest (0 when none wait)."""
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM outbox) AS pending,
                  coalesce(extract(epoch FROM now() - (SELECT created_at FROM outbox ORDER BY id LIMIT 1)), 0) AS age"""
    )
    return int(row["pending"]), max(float(row["age"]), 0.0)
