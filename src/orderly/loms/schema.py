"""The init step's database half: create the database when missing, apply migrations, seed the stock."""

from __future__ import annotations

import logging

from orderly.loms import repository as repo
from orderly.platform.migrations import load_migrations, migrate_postgres, postgres_database
from orderly.platform.settings import PostgresSettings

log = logging.getLogger(__name__)


async def migrate(settings: PostgresSettings) -> list[int]:
    """Idempotent: re-running applies only new migrations and adds only missing stock rows."""
    async with postgres_database(settings) as conn:
        applied = await migrate_postgres(conn, service="loms", migrations=load_migrations("orderly.loms", "postgres"))
        added = await repo.seed_stocks(conn, repo.seed_stocks_data())
    log.info("loms database ready", extra={"applied": applied, "stock_rows_added": added})
    return applied
