"""A small migration runner for PostgreSQL, MySQL and ClickHouse.

Migrations are plain SQL files shipped inside a service's package: ``<service>/migrations/<dialect>/NNNN_name.sql``.
Each database records what it applied in ``schema_migrations`` (service, version, name, applied_at), so several
services can share one database and a re-run applies only what is new.

- PostgreSQL: one transaction per run under an advisory lock, so a failed migration leaves nothing behind and two
  concurrent runs cannot interleave.
- MySQL: DDL commits implicitly, so each file is applied statement by statement under ``GET_LOCK`` and recorded
  right after; a failing file stops the run with its version named. Keep MySQL files to one DDL change each.
- ClickHouse: no transactions or locks; run migrations from one init step (``orderly migrate``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import asyncpg
from clickhouse_driver import Client as ClickHouseClient

from orderly.platform.settings import PostgresSettings

log = logging.getLogger(__name__)

Dialect = Literal["postgres", "mysql", "clickhouse"]
MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
PG_LOCK_KEY = 0x6F72646572  # "order": one advisory lock for every migration run in a database


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


class MigrationError(Exception):
    pass


def load_migrations(package: str, dialect: Dialect) -> list[Migration]:
    """The migrations shipped in ``<package>/migrations/<dialect>/``, ordered by version."""
    folder = resources.files(package).joinpath("migrations", dialect)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if match := MIGRATION_FILE.match(entry.name):
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{package}: two {dialect} migrations share a version: {versions}")
    return found


def split_statements(sql: str) -> list[str]:
    """Split a script on semicolons that end a line; enough for MySQL and ClickHouse DDL (no procedures)."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--") and not current:
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip().rstrip(";").strip()
            if statement:
                statements.append(statement)
            current = []
    if tail := "\n".join(current).strip():
        statements.append(tail)
    return statements


async def migrate_postgres(conn: asyncpg.Connection, *, service: str, migrations: list[Migration]) -> list[int]:
    """Apply pending migrations in one transaction; returns the versions applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PG_LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   service text NOT NULL, version integer NOT NULL, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (service, version))"""
        )
        rows = await conn.fetch("SELECT version FROM schema_migrations WHERE service = $1", service)
        done = {r["version"] for r in rows}
        applied = []
        for migration in migrations:
            if migration.version in done:
                continue
            log.info(
                "applying migration", extra={"service": service, "dialect": "postgres", "version": migration.version}
            )
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (service, version, name) VALUES ($1, $2, $3)",
                service,
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
        return applied


async def ensure_postgres_database(admin: asyncpg.Connection, database: str) -> None:
    exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    if not exists:
        await admin.execute(f'CREATE DATABASE "{database}"')


@asynccontextmanager
async def postgres_database(settings: PostgresSettings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the service's database, created first when missing (for migrate commands)."""
    admin = await asyncpg.connect(settings.dsn("postgres"))
    try:
        await ensure_postgres_database(admin, settings.database)
    finally:
        await admin.close()
    conn = await asyncpg.connect(settings.dsn())
    try:
        yield conn
    finally:
        await conn.close()


async def migrate_mysql(conn: Any, *, service: str, migrations: list[Migration]) -> list[int]:
    """Apply pending migrations statement by statement under a named lock; returns the versions applied."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT GET_LOCK('orderly-migrate', 60)")
        (locked,) = await cur.fetchone()
        if locked != 1:
            raise MigrationError("could not take the MySQL migration lock within 60 s")
        try:
            await cur.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       service VARCHAR(64) NOT NULL, version INT NOT NULL, name VARCHAR(255) NOT NULL,
                       applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (service, version))"""
            )
            await cur.execute("SELECT version FROM schema_migrations WHERE service = %s", (service,))
            done = {row[0] for row in await cur.fetchall()}
            applied = []
            for migration in migrations:
                if migration.version in done:
                    continue
                log.info(
                    "applying migration", extra={"service": service, "dialect": "mysql", "version": migration.version}
                )
                for statement in split_statements(migration.sql):
                    await cur.execute(statement)
                await cur.execute(
                    "INSERT INTO schema_migrations (service, version, name) VALUES (%s, %s, %s)",
                    (service, migration.version, migration.name),
                )
                await conn.commit()
                applied.append(migration.version)
            return applied
        finally:
            await cur.execute("SELECT RELEASE_LOCK('orderly-migrate')")
            await cur.fetchall()


def migrate_clickhouse(
    client: ClickHouseClient, *, database: str, service: str, migrations: list[Migration]
) -> list[int]:
    """Create the database if needed and apply pending migrations (blocking; use ``asyncio.to_thread``)."""
    client.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.execute(
        f"""CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations (
                service String, version UInt32, name String, applied_at DateTime DEFAULT now()
            ) ENGINE = MergeTree() ORDER BY (service, version)"""
    )
    rows = client.execute(f"SELECT version FROM `{database}`.schema_migrations WHERE service = %(s)s", {"s": service})
    done = {row[0] for row in rows}
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        log.info(
            "applying migration", extra={"service": service, "dialect": "clickhouse", "version": migration.version}
        )
        for statement in split_statements(migration.sql.replace("{database}", database)):
            client.execute(statement)
        client.execute(
            f"INSERT INTO `{database}`.schema_migrations (service, version, name) VALUES",
            [(service, migration.version, migration.name)],
        )
        applied.append(migration.version)
    return applied


async def migrate_clickhouse_async(
    client: ClickHouseClient, *, database: str, service: str, migrations: list[Migration]
) -> list[int]:
    return await asyncio.to_thread(
        migrate_clickhouse, client, database=database, service=service, migrations=migrations
    )
