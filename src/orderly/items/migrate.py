"""`orderly items migrate`: databases, tables and the stream, all idempotent (the init step of `orderly up`)."""

from __future__ import annotations

import logging

from orderly.items.deadletters import ensure_dead_letter_stream
from orderly.items.settings import ItemsSettings
from orderly.items.stream import ensure_stream
from orderly.platform.migrations import (
    load_migrations,
    lock_key,
    migrate_clickhouse_async,
    migrate_postgres,
    postgres_database,
    postgres_session_lock,
)
from orderly.platform.pools import clickhouse_client, nats_connection, quiet_nats_callback

log = logging.getLogger(__name__)
SERVICE = "items"


async def migrate(settings: ItemsSettings) -> None:
    database = settings.clickhouse.database
    async with postgres_database(settings.postgres) as conn:
        applied = await migrate_postgres(conn, service=SERVICE, migrations=load_migrations("orderly.items", "postgres"))
        # ClickHouse has no lock: a PostgreSQL session lock (named after the ClickHouse database) serialises runs.
        client = clickhouse_client(settings.clickhouse, database="default")
        try:
            applied_ch = await migrate_clickhouse_async(
                client,
                database=database,
                service=SERVICE,
                migrations=load_migrations("orderly.items", "clickhouse"),
                lock=postgres_session_lock(conn, lock_key(f"clickhouse:{database}")),
            )
        finally:
            client.disconnect()
    # Two tries, then NoServersError (a one-shot step: it says the server is away rather than waiting for it);
    # nats-py's default error callback would log each failed try with a traceback.
    async with nats_connection(
        settings.nats, connect_timeout=5, max_reconnect_attempts=1, error_cb=quiet_nats_callback
    ) as nc:
        await ensure_stream(
            nc.jetstream(), name=settings.stream_name, duplicate_window_seconds=settings.items.duplicate_window_seconds
        )
        await ensure_dead_letter_stream(nc.jetstream(), settings)
    log.info("items migrated", extra={"postgres": applied, "clickhouse": applied_ch, "stream": settings.stream_name})
