"""The migration runner on the real servers: MySQL versions resume after a failure, ClickHouse runs take a lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncmy
import asyncpg
import pytest

from orderly.platform.migrations import (
    Migration,
    MigrationError,
    lock_key,
    migrate_clickhouse_async,
    migrate_mysql,
    postgres_session_lock,
)
from orderly.platform.pools import clickhouse_client
from orderly.platform.settings import InfraSettings
from tests.plumbing import Namespace, wait_until


@pytest.fixture
async def mysql(namespace: Namespace) -> AsyncIterator[Any]:
    m = (await namespace.settings("resume")).mysql
    conn = await asyncmy.connect(
        host=m.host, port=m.port, user=m.user, password=m.password.get_secret_value(), db=m.database
    )
    try:
        yield conn
    finally:
        conn.close()


async def tables(conn: Any) -> set[str]:
    async with conn.cursor() as cur:
        await cur.execute("SHOW TABLES")
        return {row[0] for row in await cur.fetchall()}


async def test_a_mysql_version_cut_short_by_a_failure_resumes_at_the_failed_statement(mysql: Any) -> None:
    # Statement 1 is not idempotent on purpose: were it run again, the re-run would fail with "table exists".
    first = "CREATE TABLE one (id INT PRIMARY KEY);\n"
    broken = Migration(1, "three_steps", first + "INSERT INTO nowhere VALUES (1);\nCREATE TABLE three (id INT);")
    with pytest.raises(MigrationError, match=r"migration 1 \(three_steps\) failed at statement 2"):
        await migrate_mysql(mysql, service="t", migrations=[broken])
    assert {"one"} <= await tables(mysql)
    assert "three" not in await tables(mysql), "nothing after the failed statement ran"

    fixed = Migration(1, "three_steps", first + "CREATE TABLE two (id INT);\nCREATE TABLE three (id INT);")
    assert await migrate_mysql(mysql, service="t", migrations=[fixed]) == [1]
    assert {"one", "two", "three"} <= await tables(mysql)
    assert await migrate_mysql(mysql, service="t", migrations=[fixed]) == [], "recorded as done"
    async with mysql.cursor() as cur:
        await cur.execute("SELECT count(*) FROM schema_migration_steps WHERE service = 't'")
        assert await cur.fetchone() == (0,), "step records are cleared once the version is recorded"


CH_MIGRATIONS = [Migration(1, "events", "CREATE TABLE IF NOT EXISTS `{database}`.e (x UInt8) ENGINE = Memory")]


async def test_clickhouse_migrations_wait_for_the_lock_and_concurrent_runs_apply_each_version_once(
    namespace: Namespace,
) -> None:
    infra: InfraSettings = await namespace.settings("chlock")
    database = infra.clickhouse.database
    key = lock_key(f"clickhouse:{database}")
    holder = await asyncpg.connect(infra.postgres.dsn())
    conns = [await asyncpg.connect(infra.postgres.dsn()) for _ in range(2)]
    clients = [clickhouse_client(infra.clickhouse, database="default") for _ in range(2)]
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", key)
        runs = [
            asyncio.create_task(
                migrate_clickhouse_async(
                    client,
                    database=database,
                    service="t",
                    migrations=CH_MIGRATIONS,
                    lock=postgres_session_lock(conn, key),
                )
            )
            for conn, client in zip(conns, clients, strict=True)
        ]

        async def both_wait() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid <> pg_backend_pid()"
            )
            return bool(waiting == 2)

        await wait_until(both_wait, within=30, what="both runs to wait for the lock")
        assert not any(run.done() for run in runs)
        await holder.execute("SELECT pg_advisory_unlock($1)", key)
        applied = await asyncio.gather(*runs)
        assert sorted(applied) == [[], [1]], "one run applied the version, the other found it done"
        rows = clients[0].execute(f"SELECT version FROM `{database}`.schema_migrations WHERE service = 't'")
        assert rows == [(1,)]
    finally:
        for client in clients:
            client.disconnect()
        for conn in [holder, *conns]:
            await conn.close()
