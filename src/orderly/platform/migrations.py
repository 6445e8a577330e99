"""A small migration runner for PostgreSQL, MySQL and ClickHouse.

Migrations are plain SQL files shipped inside a service's package: ``<service>/migrations/<dialect>/NNNN_name.sql``.
Each database records what it applied in ``schema_migrations`` (service, version, name, applied_at), so several
services can share one database and a re-run applies only what is new.

- PostgreSQL: one transaction per run under an advisory lock, so a failed migration leaves nothing behind and two
  concurrent runs cannot interleave.
- MySQL: DDL commits implicitly, so a version cannot be atomic; it is resumable instead. Under ``GET_LOCK`` each
  statement is run and then recorded in ``schema_migration_steps`` (service, version, step); a re-run after a
  failure skips the recorded steps and goes on from the first unrecorded one. A crash between a statement and its
  record runs that one statement again, so every MySQL statement must be idempotent (``IF NOT EXISTS``,
  ``INSERT IGNORE``, ...). A failing statement stops the run naming its version and step.
- ClickHouse (18.16): no transactions and no lock of its own (MergeTree accepts duplicate rows, so even a lock table
  with a "unique" insert cannot arbitrate). The caller passes a lock from a store it already has; items takes a
  PostgreSQL session advisory lock, which the server releases by itself if the migrating process dies.

Scripts are split into statements by sqlparse, which knows quoted strings and identifiers, comments and
dollar-quoted bodies, so a ``;`` inside any of them never ends a statement.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import asyncpg
import sqlparse
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


def _log_applying(service: str, dialect: Dialect, migration: Migration, **more: int) -> None:
    log.info("applying migration", extra={"service": service, "dialect": dialect, "version": migration.version, **more})


def split_statements(sql: str) -> list[str]:
    """The script's statements without comments or their final ``;`` (a ``;`` in a literal, identifier, comment or
    ``$$`` body does not split); statements that are only comments are dropped."""
    statements = []
    for raw in sqlparse.split(sql):
        statement = sqlparse.format(raw, strip_comments=True).strip().rstrip(";").strip()
        if statement:
            statements.append(statement)
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
            _log_applying(service, "postgres", migration)
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
    """Apply pending migrations statement by statement under a named lock, resuming a version a failure cut short.

    Returns the versions completed by this run.
    """
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
            await cur.execute(
                """CREATE TABLE IF NOT EXISTS schema_migration_steps (
                       service VARCHAR(64) NOT NULL, version INT NOT NULL, step INT NOT NULL,
                       applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (service, version, step))"""
            )
            await cur.execute("SELECT version FROM schema_migrations WHERE service = %s", (service,))
            done = {row[0] for row in await cur.fetchall()}
            applied = []
            for migration in migrations:
                if migration.version in done:
                    continue
                await _apply_mysql_version(conn, cur, service=service, migration=migration)
                applied.append(migration.version)
            return applied
        finally:
            await cur.execute("SELECT RELEASE_LOCK('orderly-migrate')")
            await cur.fetchall()


async def _apply_mysql_version(conn: Any, cur: Any, *, service: str, migration: Migration) -> None:
    """Run the version's statements not yet recorded, recording each right after it; then record the version."""
    await cur.execute(
        "SELECT step FROM schema_migration_steps WHERE service = %s AND version = %s", (service, migration.version)
    )
    recorded = {row[0] for row in await cur.fetchall()}
    _log_applying(service, "mysql", migration, resumed_after=len(recorded))
    for step, statement in enumerate(split_statements(migration.sql), start=1):
        if step in recorded:
            continue
        try:
            await cur.execute(statement)
        except Exception as exc:
            raise MigrationError(
                f"{service} mysql migration {migration.version} ({migration.name}) failed at statement {step}: {exc}; "
                "the statements before it stay applied and recorded, a re-run resumes here"
            ) from exc
        await cur.execute(
            "INSERT INTO schema_migration_steps (service, version, step) VALUES (%s, %s, %s)",
            (service, migration.version, step),
        )
        await conn.commit()
    await cur.execute(
        "INSERT INTO schema_migrations (service, version, name) VALUES (%s, %s, %s)",
        (service, migration.version, migration.name),
    )
    await cur.execute(
        "DELETE FROM schema_migration_steps WHERE service = %s AND version = %s", (service, migration.version)
    )
    await conn.commit()


def migrate_clickhouse(
    client: ClickHouseClient, *, database: str, service: str, migrations: list[Migration]
) -> list[int]:
    """Create the database if needed and apply pending migrations (blocking; call ``migrate_clickhouse_async``).

    ``database`` passed the settings' identifier pattern: it is the only name put into these statements.
    """
    client.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.execute(
        f"""CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations (
                service String, version UInt32, name String, applied_at DateTime DEFAULT now()
            ) ENGINE = MergeTree() ORDER BY (service, version)"""
    )
    rows = client.execute(
        f"SELECT version FROM `{database}`.schema_migrations WHERE service = %(s)s",  # noqa: S608 - checked name
        {"s": service},
    )
    done = {row[0] for row in rows}
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        _log_applying(service, "clickhouse", migration)
        for statement in split_statements(migration.sql.replace("{database}", database)):
            client.execute(statement)
        client.execute(
            f"INSERT INTO `{database}`.schema_migrations (service, version, name) VALUES",
            [(service, migration.version, migration.name)],
        )
        applied.append(migration.version)
    return applied


async def migrate_clickhouse_async(
    client: ClickHouseClient,
    *,
    database: str,
    service: str,
    migrations: list[Migration],
    lock: AbstractAsyncContextManager[Any],
) -> list[int]:
    """``migrate_clickhouse`` in a thread, holding ``lock`` (ClickHouse has none): one run at a time per database."""
    async with lock:
        return await asyncio.to_thread(
            migrate_clickhouse, client, database=database, service=service, migrations=migrations
        )


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (e.g. ``clickhouse:orderly``)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@asynccontextmanager
async def postgres_session_lock(conn: asyncpg.Connection, key: int) -> AsyncIterator[None]:
    """A session advisory lock held until the block exits; PostgreSQL drops it if the session dies first."""
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
