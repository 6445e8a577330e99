"""PostgreSQL adapter: every SQL statement of the items service, each run on a connection the caller holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from orderly.items.domain import ChangeEvent, Item

# Every statement names the columns of an item in full (the order ``_item`` reads them by name, so any order works).
# One advisory lock serialises every statement that assigns priorities (create, reprioritize), so max + 1 is safe.
PRIORITY_LOCK_KEY = 0x6974656D73  # "items"
OUTBOX_CHANNEL = "items_outbox"


def _item(row: asyncpg.Record) -> Item:
    return Item(
        id=row["id"],
        campaign_id=row["campaign_id"],
        name=row["name"],
        description=row["description"],
        priority=row["priority"],
        removed=row["removed"],
        created_at=row["created_at"],
    )


async def lock_priorities(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PRIORITY_LOCK_KEY)


async def campaign_exists(conn: asyncpg.Connection, campaign_id: int) -> bool:
    # FOR KEY SHARE keeps the campaign from being deleted before our insert commits.
    found = await conn.fetchval("SELECT 1 FROM campaigns WHERE id = $1 FOR KEY SHARE", campaign_id)
    return found is not None


async def insert_item(conn: asyncpg.Connection, *, campaign_id: int, name: str, description: str | None) -> Item:
    row = await conn.fetchrow(
        """INSERT INTO items (campaign_id, name, description, priority)
            VALUES ($1, $2, $3, (SELECT coalesce(max(priority), 0) + 1 FROM items))
            RETURNING id, campaign_id, name, description, priority, removed, created_at""",
        campaign_id,
        name,
        description,
    )
    return _item(row)


async def lock_item(conn: asyncpg.Connection, *, item_id: int, campaign_id: int) -> Item | None:
    """The live item, row-locked until the transaction ends (None when missing or removed)."""
    row = await conn.fetchrow(
        """SELECT id, campaign_id, name, description, priority, removed, created_at
           FROM items WHERE id = $1 AND campaign_id = $2 AND NOT removed FOR UPDATE""",
        item_id,
        campaign_id,
    )
    return None if row is None else _item(row)


async def mark_removed(conn: asyncpg.Connection, *, item_id: int) -> Item:
    row = await conn.fetchrow(
        """UPDATE items SET removed = true WHERE id = $1
           RETURNING id, campaign_id, name, description, priority, removed, created_at""",
        item_id,
    )
    return _item(row)


async def collision_run(conn: asyncpg.Connection, *, item_id: int, new_priority: int, limit: int) -> list[int]:
    """The other items that must move up by one for the item to take ``new_priority``, at most ``limit`` + 1 of them.

    Only the unbroken run of priorities from ``new_priority`` collides: the first free priority ends it, and every
    item past that gap keeps its place (moving it would leave the order exactly as it is). Removed items count too.
    """
    rows = await conn.fetch(
        "SELECT id, priority FROM items WHERE priority >= $1 AND id <> $2 ORDER BY priority, id LIMIT $3",
        new_priority,
        item_id,
        limit + 1,
    )
    run, collides_at = [], new_priority
    for row in rows:
        if row["priority"] > collides_at:
            break
        run.append(row["id"])
        collides_at = row["priority"] + 1
    return run


async def move_items(conn: asyncpg.Connection, *, item_id: int, new_priority: int, shifted: list[int]) -> list[Item]:
    """Give the item ``new_priority`` and the ``shifted`` items one more each; the changed rows, in priority order."""
    rows = await conn.fetch(
        """UPDATE items SET priority = priority + 1 WHERE id = ANY($1::bigint[])
           RETURNING id, campaign_id, name, description, priority, removed, created_at""",
        shifted,
    )
    moved = await conn.fetchrow(
        """UPDATE items SET priority = $2 WHERE id = $1
           RETURNING id, campaign_id, name, description, priority, removed, created_at""",
        item_id,
        new_priority,
    )
    changed = [_item(moved), *(_item(r) for r in rows)]
    changed.sort(key=lambda item: (item.priority, item.id))
    return changed


# The outbox rows go in as arrays and pg_notify (delivered at commit, like NOTIFY) runs after them: one statement.
_ADD_EVENTS = """added AS (
       INSERT INTO items_outbox (event_id, subject, payload)
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) RETURNING 1
   )
   SELECT pg_notify($4, '') FROM (SELECT count(*) FROM added) AS done"""


def _event_arguments(events: Sequence[ChangeEvent]) -> tuple[list[str], list[str], list[str], str]:
    return (
        [e.event_id for e in events],
        [e.subject for e in events],
        [json.dumps(e.payload(), ensure_ascii=False) for e in events],
        OUTBOX_CHANNEL,
    )


async def add_events(conn: asyncpg.Connection, events: Sequence[ChangeEvent]) -> None:
    """Write change events into the outbox (same transaction as the change) and wake the relay on commit.

    One round trip: writes are round-trip bound, so this saves about one seventh of an update's time in PostgreSQL.
    """
    await conn.execute("WITH " + _ADD_EVENTS, *_event_arguments(events))


async def save_edit(conn: asyncpg.Connection, item: Item, events: Sequence[ChangeEvent]) -> None:
    """Store an edited item's name and description and its change events in one statement (one round trip).

    The caller holds the row lock (``lock_item``) and built ``item`` from the locked row, so the row as stored is
    exactly ``item``: an edit changes no other column.
    """
    await conn.execute(
        # Two constant fragments joined; every value is a bind parameter.
        """WITH edited AS (UPDATE items SET name = $5, description = $6 WHERE id = $7 RETURNING 1), """ + _ADD_EVENTS,  # noqa: S608
        *_event_arguments(events),
        item.name,
        item.description,
        item.id,
    )


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    removed: int


async def page(conn: asyncpg.Connection, *, limit: int, offset: int) -> tuple[Counts, list[Item]]:
    """Items ordered by priority, starting at the ``offset``-th (1-based), and the table's counts."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        counts = await conn.fetchrow("SELECT count(*) AS total, count(*) FILTER (WHERE removed) AS removed FROM items")
        rows = await conn.fetch(
            """SELECT id, campaign_id, name, description, priority, removed, created_at
               FROM items ORDER BY priority, id LIMIT $1 OFFSET $2""",
            limit,
            offset - 1,
        )
    return Counts(total=counts["total"], removed=counts["removed"]), [_item(r) for r in rows]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    subject: str
    payload: bytes


async def claim_outbox(conn: asyncpg.Connection, *, limit: int) -> list[OutboxRow]:
    """The oldest outbox rows, locked for this transaction; other relays skip them rather than wait."""
    rows: list[Any] = await conn.fetch(
        """SELECT id, event_id::text AS event_id, subject, payload::text AS payload
           FROM items_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
        limit,
    )
    return [OutboxRow(r["id"], r["event_id"], r["subject"], r["payload"].encode()) for r in rows]


async def delete_outbox(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    await conn.execute("DELETE FROM items_outbox WHERE id = ANY($1::bigint[])", list(ids))


async def outbox_backlog(conn: asyncpg.Connection) -> tuple[int, float]:
    """Outbox rows waiting for the relay, and the age in seconds of the oldest (0 when none wait)."""
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM items_outbox) AS pending,
                  coalesce(extract(epoch FROM now() - (SELECT created_at FROM items_outbox ORDER BY id LIMIT 1)), 0)
                    AS age"""
    )
    return int(row["pending"]), max(float(row["age"]), 0.0)
