"""A write whose connection dies during its COMMIT says its outcome is unknown; one that dies before, does not."""

from __future__ import annotations

import asyncpg
import pytest

from orderly.platform.errors import OutcomeUnknownError, Transient, classify
from orderly.platform.settings import InfraSettings
from orderly.platform.transactions import WriteTransaction


async def _terminate(infra: InfraSettings, pid: int) -> None:
    admin = await asyncpg.connect(infra.postgres.dsn())
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def _write(infra: InfraSettings, conn: asyncpg.Connection, *, lost_before_the_last_statement: bool) -> None:
    async with WriteTransaction(conn):
        if lost_before_the_last_statement:
            await _terminate(infra, conn.get_server_pid())
        await conn.execute("SELECT 1")
        if not lost_before_the_last_statement:
            await _terminate(infra, conn.get_server_pid())  # the body is done: the next thing sent is COMMIT


async def test_a_connection_lost_at_commit_is_outcome_unknown(infra: InfraSettings) -> None:
    conn = await asyncpg.connect(infra.postgres.dsn())
    try:
        with pytest.raises(OutcomeUnknownError) as caught:
            await _write(infra, conn, lost_before_the_last_statement=False)
        assert caught.value.dependency == "postgres"
    finally:
        conn.terminate()


async def test_a_connection_lost_before_commit_is_a_plain_outage(infra: InfraSettings) -> None:
    conn = await asyncpg.connect(infra.postgres.dsn())
    try:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - which one asyncpg raises is not the point
            await _write(infra, conn, lost_before_the_last_statement=True)  # rolled back: nothing applied
        assert not isinstance(caught.value, OutcomeUnknownError)
        assert classify(caught.value) == Transient("postgres", classify(caught.value).reason)
    finally:
        conn.terminate()
