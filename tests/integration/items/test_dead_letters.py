"""Poison in the change log is parked, counted and replayed once: the audit on the real NATS and ClickHouse."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from typing import Any

import nats
import pytest
from prometheus_client import REGISTRY

from orderly.items.audit import audit_probes, run_audit
from orderly.items.changelog import ChangeLog, LogQuery
from orderly.items.settings import ItemsSettings
from orderly.platform.lifecycle import Shutdown
from orderly.platform.pools import clickhouse_client
from tests.integration.items.support import items_env, migrated
from tests.plumbing import Namespace, dead_letters_listed, orderly_dlq, wait_until


def event(priority: int = 1, **changes: Any) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "kind": "created",
        "itemId": 7,
        "campaignId": 1,
        "name": "poison test",
        "description": None,
        "priority": priority,
        "removed": False,
        "eventTime": "2026-01-01T00:00:00Z",
        "eventTimeUs": int(time.time() * 1_000_000),
        **changes,
    }


async def publish(settings: ItemsSettings, payload: bytes, msg_id: str) -> bool:
    """Publish to the change stream as the relay does; True when JetStream dropped it as a duplicate."""
    nc = await nats.connect(settings.nats.url())
    try:
        ack = await nc.jetstream().publish(
            f"{settings.stream_name}.item.created",
            payload,
            stream=settings.stream_name,
            headers={"Nats-Msg-Id": msg_id},
        )
        return bool(ack.duplicate)
    finally:
        await nc.close()


def dlq(settings: ItemsSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return orderly_dlq(items_env(settings), *args)


def listed(settings: ItemsSettings) -> list[dict[str, Any]]:
    return dead_letters_listed(items_env(settings), "items")


async def dead_letters_metric(settings: ItemsSettings) -> float | None:
    """orderly_dead_letters{service="items"} as the audit's /metrics serves it: after its scrape-time refresh."""
    changelog = ChangeLog(clickhouse_client(settings.clickhouse), database=settings.clickhouse.database)
    nc = await nats.connect(settings.nats.url())
    try:
        js = nc.jetstream()
        await audit_probes(settings, changelog, lambda: js).refresh()
    finally:
        await nc.close()
        changelog.close()
    return REGISTRY.get_sample_value("orderly_dead_letters", {"service": "items"})


async def logged(settings: ItemsSettings, event_id: str) -> int:
    changelog = ChangeLog(clickhouse_client(settings.clickhouse), database=settings.clickhouse.database)
    try:
        _, rows = await changelog.read(LogQuery(limit=1000, offset=1, item_id=7))
    finally:
        changelog.close()
    return sum(1 for row in rows if row["eventId"] == event_id)


def alter_priority(settings: ItemsSettings, column_type: str) -> None:
    client = clickhouse_client(settings.clickhouse)
    try:
        client.execute(f"ALTER TABLE `{settings.clickhouse.database}`.item_events MODIFY COLUMN priority {column_type}")
    finally:
        client.disconnect()


@pytest.fixture
async def fresh(namespace: Namespace, request: pytest.FixtureRequest) -> ItemsSettings:
    return await migrated(await namespace.settings(request.node.name[-18:].strip("_[]")), audit_flush_seconds=0.2)


async def test_an_event_clickhouse_refuses_is_parked_counted_and_after_the_fix_replayed_exactly_once(
    fresh: ItemsSettings,
) -> None:
    alter_priority(fresh, "Int32")  # a schema that drifted: the column is too narrow for some events
    before, refused, after = event(), event(priority=2**40), event()
    for e in (before, refused, after):
        await publish(fresh, json.dumps(e).encode(), e["eventId"])

    await run_audit(fresh, Shutdown(), burst=True)

    assert await logged(fresh, before["eventId"]) == 1, "the events around the refused one went on"
    assert await logged(fresh, after["eventId"]) == 1
    assert await logged(fresh, refused["eventId"]) == 0
    assert await dead_letters_metric(fresh) == 1
    [letter] = listed(fresh)
    assert "ClickHouse refused it" in letter["reason"]
    assert letter["source"] == f"{fresh.stream_name}.item.created"
    assert json.loads(letter["payload"]) == refused
    shown = dlq(fresh, "show", "items", letter["id"])
    assert shown.returncode == 0, shown.stderr
    assert "ClickHouse refused it" in shown.stdout
    assert str(2**40) in shown.stdout

    alter_priority(fresh, "Int64")  # the fix
    replayed = dlq(fresh, "replay", "items", letter["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert listed(fresh) == [], "the dead letter is removed after the re-publish was acknowledged"
    await run_audit(fresh, Shutdown(), burst=True)
    assert await logged(fresh, refused["eventId"]) == 1
    assert await dead_letters_metric(fresh) == 0

    again = dlq(fresh, "replay", "items", letter["id"])
    assert again.returncode == 1
    assert "no dead letter" in again.stderr
    # A replay repeated after a crash between its publish and its delete: the stream drops the same replay id, and an
    # event that does reach ClickHouse twice is still one row of the change log.
    assert await publish(fresh, json.dumps(refused).encode(), f"replay:{fresh.dead_letter_stream_name}:{letter['id']}")
    await publish(fresh, json.dumps(refused).encode(), "after-the-duplicate-window")
    await run_audit(fresh, Shutdown(), burst=True)
    assert await logged(fresh, refused["eventId"]) == 1


async def test_an_unparsable_event_is_parked_without_stopping_the_audit_and_its_replay_is_refused(
    fresh: ItemsSettings,
) -> None:
    good = event()
    await publish(fresh, b'{"eventId": "x", "itemId": "not a number"', "broken-1")
    await publish(fresh, json.dumps(good).encode(), good["eventId"])

    await run_audit(fresh, Shutdown(), burst=True)

    assert await logged(fresh, good["eventId"]) == 1
    [letter] = listed(fresh)
    assert letter["reason"].startswith("cannot be parsed")
    assert await dead_letters_metric(fresh) == 1
    refused = dlq(fresh, "replay", "items", letter["id"])
    assert refused.returncode == 1
    assert "still not a change event" in refused.stderr
    assert [x["id"] for x in listed(fresh)] == [letter["id"]], "a refused replay leaves the dead letter parked"


async def test_an_event_at_its_last_delivery_is_parked_instead_of_dropped_by_jetstream(
    namespace: Namespace,
) -> None:
    settings = await migrated(
        await namespace.settings("maxdeliver"), audit_max_deliver=2, audit_ack_wait_seconds=1, audit_flush_seconds=0.2
    )
    e = event()
    await publish(settings, json.dumps(e).encode(), e["eventId"])
    # A first audit takes the event and dies before its ack: the durable consumer delivered it once.
    await run_audit(settings, Shutdown(), burst=True)  # creates the durable consumer (and would insert the event) ...
    nc = await nats.connect(settings.nats.url())
    try:
        js = nc.jetstream()
        await publish(settings, json.dumps(second := event()).encode(), second["eventId"])
        sub = await js.pull_subscribe_bind(settings.items.consumer, stream=settings.stream_name)
        [taken] = await sub.fetch(1, timeout=5)
        assert taken.metadata.num_delivered == 1
    finally:
        await nc.close()

    # ... the second event comes back after ack_wait, on its second and last delivery.
    async def parked() -> bool:
        if listed(settings):
            return True
        await run_audit(settings, Shutdown(), burst=True)
        return False

    await wait_until(parked, within=30, what="the event at its last delivery parked")
    [letter] = listed(settings)
    assert letter["reason"].startswith("delivered 2 times")
    assert letter["details"]["deliveries"] == "2"
    assert await logged(settings, second["eventId"]) == 0
    replayed = dlq(settings, "replay", "items", letter["id"])
    assert replayed.returncode == 0, replayed.stderr
    await run_audit(settings, Shutdown(), burst=True)
    assert await logged(settings, second["eventId"]) == 1
    assert await logged(settings, e["eventId"]) == 1
