"""The writer's stored procedure on a real PostgreSQL: exact rows_before, idempotent redelivery, all-or-nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from uuid_utils.compat import uuid7

from orderly.ingest import repository
from orderly.ingest.domain import AcceptedRequest, StoredBatch
from tests.plumbing import Namespace


def request(*numbers: int) -> AcceptedRequest:
    return AcceptedRequest(token=uuid7(), numbers=numbers, accepted_at=datetime.now(UTC))


@pytest.fixture
async def conn(namespace: Namespace) -> AsyncIterator[asyncpg.Connection]:
    settings = await namespace.settings(f"store{uuid7().hex[-6:]}")
    await repository.migrate(settings.postgres)
    connection = await repository.connect(settings.postgres)
    yield connection
    await connection.close()


async def _rows_before(conn: asyncpg.Connection) -> list[tuple[str, int]]:
    rows = await conn.fetch("SELECT token::text AS token, body FROM requests ORDER BY request_id")
    return [(row["token"], row["body"]["rows_before"]) for row in rows]  # the jsonb codec decodes


async def test_redelivered_message_is_not_inserted_twice_and_rows_before_stays_exact(
    conn: asyncpg.Connection,
) -> None:
    store = repository.RequestStore(conn)
    a, b, c = request(1), request(2), request(3)
    assert (await store.store_batch([a, b])).inserted == 2
    assert await store.store_batch([b, c]) == StoredBatch(inserted=1, skipped=(0,))  # b: a redelivery
    assert await _rows_before(conn) == [(str(a.token), 0), (str(b.token), 1), (str(c.token), 2)]
    assert await conn.fetchval("SELECT row_count FROM requests_counter") == 3


async def test_trigger_unpacks_every_number_in_position_order(conn: asyncpg.Connection) -> None:
    store = repository.RequestStore(conn)
    first, second = request(7, -3, 42), request(-(2**63), 2**63 - 1)
    await store.store_batch([first, second])
    events = await conn.fetch("SELECT token::text AS token, position, value, rows_before FROM events ORDER BY event_id")
    assert [(e["token"], e["position"], e["value"], e["rows_before"]) for e in events] == [
        (str(first.token), 0, 7, 0),
        (str(first.token), 1, -3, 0),
        (str(first.token), 2, 42, 0),
        (str(second.token), 0, -(2**63), 1),
        (str(second.token), 1, 2**63 - 1, 1),
    ]


async def test_a_failing_request_rolls_back_its_whole_batch(conn: asyncpg.Connection) -> None:
    store = repository.RequestStore(conn)
    out_of_range = AcceptedRequest(token=uuid7(), numbers=(2**63,), accepted_at=datetime.now(UTC))
    with pytest.raises(asyncpg.exceptions.NumericValueOutOfRangeError):
        await store.store_batch([request(1), out_of_range])
    assert await conn.fetchval("SELECT count(*) FROM requests") == 0
    assert await conn.fetchval("SELECT count(*) FROM events") == 0
    assert await conn.fetchval("SELECT row_count FROM requests_counter") == 0


async def test_revoked_token_is_never_stored_and_stored_token_cannot_be_revoked(conn: asyncpg.Connection) -> None:
    store = repository.RequestStore(conn)
    stored, unconfirmed = request(1), request(2)
    await store.store_batch([stored])
    assert await conn.fetchval("SELECT ingest_revoke_unconfirmed($1)", stored.token) is False
    assert await conn.fetchval("SELECT ingest_revoke_unconfirmed($1)", unconfirmed.token) is True
    assert await store.store_batch([unconfirmed]) == StoredBatch(inserted=0, skipped=(0,))
    assert await _rows_before(conn) == [(str(stored.token), 0)]
