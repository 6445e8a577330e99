"""The databases a benchmark creates for itself, dropped again when it ends."""

from __future__ import annotations

import asyncpg

from orderly.platform.settings import PostgresSettings


async def drop_postgres_database(postgres: PostgresSettings, database: str) -> None:
    """Drop ``database`` (if it is there) even while connections to it are still open."""
    admin = await asyncpg.connect(postgres.dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()
