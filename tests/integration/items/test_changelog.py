"""Outbox → JetStream → ClickHouse, each hop on its real server, run in-process in burst mode."""

from __future__ import annotations

import asyncpg
import httpx
import nats
import pytest

from orderly.items.audit import run_audit
from orderly.items.changelog import ChangeLog, LogQuery
from orderly.items.relay import run_relay
from orderly.items.settings import ItemsSettings
from orderly.platform.lifecycle import Shutdown
from orderly.platform.pools import clickhouse_client
from tests.integration.items.support import api_client, create, migrated
from tests.plumbing import Namespace, pg_value


@pytest.fixture
async def fresh(namespace: Namespace, request: pytest.FixtureRequest) -> ItemsSettings:
    return await migrated(await namespace.settings(request.node.name[-20:].strip("_[]")))


async def stream_messages(settings: ItemsSettings) -> int:
    nc = await nats.connect(settings.nats.url())
    try:
        info = await nc.jetstream().stream_info(settings.stream_name)
        return int(info.state.messages)
    finally:
        await nc.close()


async def outbox_rows(settings: ItemsSettings) -> int:
    return int(await pg_value(settings.postgres.dsn(), "SELECT count(*) FROM items_outbox"))


async def make_changes(client: httpx.AsyncClient) -> int:
    """Two creates, an update, a reprioritize moving both, a remove: six events."""
    a = await create(client, "a")
    b = await create(client, "b")
    await client.patch("/item/update", params={"id": a["id"], "campaignId": 1}, json={"name": "a2"})
    await client.patch("/item/reprioritize", params={"id": b["id"], "campaignId": 1}, json={"newPriority": 1})
    await client.delete("/item/remove", params={"id": a["id"], "campaignId": 1})
    return 6


async def test_each_change_is_logged_once_through_outbox_stream_and_clickhouse(fresh: ItemsSettings) -> None:
    async with api_client(fresh) as client:
        expected = await make_changes(client)
        assert await outbox_rows(fresh) == expected, "events wait in the outbox, written with their changes"
        await run_relay(fresh, Shutdown(), burst=True)
        assert await outbox_rows(fresh) == 0
        assert await stream_messages(fresh) == expected
        await run_audit(fresh, Shutdown(), burst=True)
        logs = (await client.get("/logs", params={"limit": 100})).json()
    assert logs["meta"]["total"] == expected
    kinds = sorted(e["kind"] for e in logs["logs"])
    assert kinds == ["created", "created", "removed", "reprioritized", "reprioritized", "updated"]
    times = [e["eventTime"] for e in logs["logs"]]
    assert times == sorted(times, reverse=True), "newest first"
    assert set(logs["logs"][0]) == {
        "eventId", "kind", "itemId", "campaignId", "name", "description", "priority", "removed", "eventTime",
    }  # fmt: skip


async def test_a_republished_event_is_dropped_by_the_stream(fresh: ItemsSettings) -> None:
    """A relay that crashed after the PubAck but before deleting the row publishes it again: Nats-Msg-Id dedupes."""
    async with api_client(fresh) as client:
        await create(client, "once")
    conn = await asyncpg.connect(fresh.postgres.dsn())
    try:
        [row] = await conn.fetch("SELECT event_id, subject, payload FROM items_outbox")
        await run_relay(fresh, Shutdown(), burst=True)
        await conn.execute(
            "INSERT INTO items_outbox (event_id, subject, payload) VALUES ($1, $2, $3)",
            row["event_id"],
            row["subject"],
            row["payload"],
        )
        await run_relay(fresh, Shutdown(), burst=True)
    finally:
        await conn.close()
    assert await stream_messages(fresh) == 1


async def test_a_redelivered_batch_never_shows_twice_in_logs(fresh: ItemsSettings) -> None:
    """An audit process that inserted but died before acking inserts the same events again on redelivery."""
    async with api_client(fresh) as client:
        await make_changes(client)
        conn = await asyncpg.connect(fresh.postgres.dsn())
        try:
            payloads = [r[0].encode() for r in await conn.fetch("SELECT payload::text FROM items_outbox ORDER BY id")]
        finally:
            await conn.close()
        changelog = ChangeLog(clickhouse_client(fresh.clickhouse), database=fresh.clickhouse.database)
        try:
            await changelog.insert(payloads)
            await changelog.insert(payloads[2:])
            await changelog.insert(payloads[:1])
            total, events = await changelog.read(LogQuery(limit=100, offset=1))
            by_item, _ = await changelog.read(LogQuery(limit=100, offset=1, item_id=events[-1]["itemId"]))
            none, _ = await changelog.read(LogQuery(limit=100, offset=1, campaign_id=2))
        finally:
            changelog.close()
        via_api = (await client.get("/logs", params={"limit": 100})).json()["meta"]["total"]
    assert total == len(payloads) == via_api
    assert len({e["eventId"] for e in events}) == len(payloads)
    assert 0 < by_item < total
    assert none == 0
