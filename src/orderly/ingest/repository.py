"""PostgreSQL adapters: the writer's batch insert, the API's revocation, the daemon's reads and cursor."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from orderly.ingest.domain import AcceptedRequest, StoredBatch
from orderly.platform.migrations import load_migrations, migrate_postgres, postgres_database
from orderly.platform.settings import PostgresSettings

SERVICE = "ingest"
NOTIFY_CHANNEL = "ingest_events"


async def migrate(settings: PostgresSettings) -> list[int]:
    """Create the database when missing and apply pending migrations (idempotent)."""
    async with postgres_database(settings) as conn:
        return await migrate_postgres(conn, service=SERVICE, migrations=load_migrations("orderly.ingest", "postgres"))


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(settings: PostgresSettings) -> asyncpg.Connection:
    conn = await asyncpg.connect(settings.dsn())
    await _init_connection(conn)
    return conn


class RequestStore:
    """The single writer's side: one transaction per batch, requests inserted in delivery order."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def store_batch(self, batch: Sequence[AcceptedRequest]) -> StoredBatch:
        """Insert the batch in order in one transaction (commit on return); says which requests were skipped."""
        async with self.conn.transaction():
            skipped: list[int] = await self.conn.fetchval(
                "SELECT ingest_store_batch($1::uuid[], $2::text[]::jsonb[], $3::timestamptz[])",
                [r.token for r in batch],
                # JSON text per request: a list of lists would be sent as a two-dimensional array.
                [json.dumps(r.numbers, separators=(",", ":")) for r in batch],
                [r.accepted_at for r in batch],
            )
        return StoredBatch(inserted=len(batch) - len(skipped), skipped=tuple(i - 1 for i in skipped))


async def revoke_unconfirmed(pool: asyncpg.Pool, token: UUID) -> bool:
    """After a lost confirm: True when the token is now revoked, False when it was stored already."""
    async with pool.acquire() as conn:
        revoked: bool = await conn.fetchval("SELECT ingest_revoke_unconfirmed($1)", token)
        return revoked


class EventReader:
    """The daemon's side: events after a cursor in event_id order, and the persisted cursor."""

    def __init__(self, conn: asyncpg.Connection, *, name: str) -> None:
        self.conn, self.name = conn, name

    async def load_cursor(self) -> int:
        await self.conn.execute(
            "INSERT INTO daemon_cursors (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", self.name
        )
        cursor: int = await self.conn.fetchval("SELECT last_event_id FROM daemon_cursors WHERE name = $1", self.name)
        return cursor

    async def save_cursor(self, last_event_id: int) -> None:
        await self.conn.execute(
            "UPDATE daemon_cursors SET last_event_id = $2, updated_at = now() WHERE name = $1",
            self.name,
            last_event_id,
        )

    async def events_after(self, cursor: int, limit: int) -> list[dict[str, Any]]:
        rows = await self.conn.fetch(
            """SELECT event_id, request_id, token, position, value, rows_before, accepted_at, stored_at
               FROM events WHERE event_id > $1 ORDER BY event_id LIMIT $2""",
            cursor,
            limit,
        )
        return [event_line(row) for row in rows]


def _iso(value: datetime) -> str:
    return value.isoformat()


def event_line(row: Any) -> dict[str, Any]:
    return {
        "event_id": row["event_id"],
        "request_id": row["request_id"],
        "token": str(row["token"]),
        "position": row["position"],
        "value": row["value"],
        "rows_before": row["rows_before"],
        "accepted_at": _iso(row["accepted_at"]),
        "stored_at": _iso(row["stored_at"]),
    }
