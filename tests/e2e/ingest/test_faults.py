"""Crashes and outages: kill -9 of worker or daemon, a hot standby worker, poison messages."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import aio_pika
import httpx
import pytest
from uuid_utils.compat import uuid7

from orderly.ingest import repository
from orderly.ingest.broker import Publisher, declare_queues
from orderly.ingest.domain import AcceptedRequest
from orderly.ingest.settings import IngestOptions
from tests.e2e.ingest.conftest import (
    assert_happens_before_order,
    assert_rows_before_exact,
    assert_stored_exactly,
    count_stored,
    migrated_settings,
    printed_events,
    send_requests,
    start_api,
    stored_requests,
    wait_for_line,
    wait_stored,
)
from tests.plumbing import Namespace, Processes, free_port, wait_until

pytestmark = pytest.mark.slow


async def test_worker_killed_mid_batch_loses_nothing_and_inserts_nothing_twice(
    namespace: Namespace, processes: Processes
) -> None:
    settings, env = await migrated_settings(namespace, "killworker")
    _, port = start_api(processes, env)
    sent = await send_requests(port, clients=20, per_client=150)
    tokens = {s.token for s in sent if s.status == 202}
    assert len(tokens) == 3000

    # Small batches make the drain slow enough to be caught in the middle.
    first = processes.start("ingest", "worker", "--batch-size", "20", env=env)
    await wait_stored(settings, 300, within=60, what="the worker to store a few batches")
    first.kill()
    assert await count_stored(settings) < len(tokens), "the worker finished before it could be killed"

    processes.start("ingest", "worker", "--batch-size", "100", env=env)
    await wait_stored(settings, len(tokens), within=120, what="every accepted request stored")
    assert_stored_exactly(await stored_requests(settings), tokens)


async def _stored_metric(port: int) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for line in text.splitlines():
        if line.startswith("ingest_requests_stored_total "):
            return float(line.split()[1])
    raise AssertionError("no ingest_requests_stored_total metric")


async def test_standby_worker_takes_over_when_the_active_one_dies_and_order_holds(
    namespace: Namespace, processes: Processes
) -> None:
    settings, env = await migrated_settings(namespace, "standby")
    _, port = start_api(processes, env)
    metrics_active, metrics_standby = free_port(), free_port()
    active = processes.start("ingest", "worker", "--health-port", str(metrics_active), env=env)
    await wait_for_line(active, "consuming", within=30)
    standby = processes.start("ingest", "worker", "--health-port", str(metrics_standby), env=env)
    await wait_for_line(standby, "consuming", within=30)
    daemon = processes.start("ingest", "daemon", env=env)

    before = await send_requests(port, clients=10, per_client=100)
    await wait_stored(settings, 1000, within=60, what="1000 requests stored")
    assert await _stored_metric(metrics_active) == 1000
    assert await _stored_metric(metrics_standby) == 0  # a second worker is never a second writer

    active.kill()
    after = await send_requests(port, clients=10, per_client=100, first_marker=1000)
    await wait_stored(settings, 2000, within=60, what="the standby to store the rest")
    assert await _stored_metric(metrics_standby) == 1000

    accepted = [s for s in before + after if s.status == 202]
    assert len(accepted) == 2000
    events = await printed_events(daemon, accepted, within=60)
    assert_happens_before_order(accepted, events)
    assert_rows_before_exact(events)
    assert_stored_exactly(await stored_requests(settings), {s.token for s in accepted})


def _parsed(lines: list[str]) -> list[int]:
    ids = []
    for line in lines:
        try:
            ids.append(json.loads(line)["event_id"])
        except ValueError:
            continue  # a line cut by kill -9 is printed again after the restart
    return ids


async def test_daemon_killed_resumes_from_its_cursor_repeating_at_most_one_batch(
    namespace: Namespace, processes: Processes
) -> None:
    settings, migrated_env = await migrated_settings(namespace, "killdaemon")
    env = {**migrated_env, "ORDERLY_INGEST__DAEMON_BATCH": "20"}
    conn = await repository.connect(settings.postgres)
    try:
        # Stored through the worker's own batch procedure: the daemon only reads the events table.
        store = repository.RequestStore(conn)
        for chunk in range(20):
            batch = [
                AcceptedRequest(token=uuid7(), numbers=(chunk, i), accepted_at=datetime.now(UTC)) for i in range(500)
            ]
            await store.store_batch(batch)
        expected = [r["event_id"] for r in await conn.fetch("SELECT event_id FROM events ORDER BY event_id")]
    finally:
        await conn.close()
    total = len(expected)
    assert total == 20_000

    first = processes.start("ingest", "daemon", env=env)

    async def some_out() -> bool:
        return len(first.lines) >= 100

    await wait_until(some_out, within=60, what="the daemon to print some events")
    first.kill()
    printed_first = _parsed(first.lines)
    assert len(printed_first) < total, "the daemon finished before it could be killed"

    second = processes.start("ingest", "daemon", env=env)

    async def rest_out() -> bool:
        ids = _parsed(second.lines)
        return bool(ids) and ids[-1] == expected[-1]

    await wait_until(rest_out, within=60, what="the restarted daemon to reach the last event")
    printed_second = _parsed(second.lines)
    assert printed_first == sorted(printed_first)
    assert printed_second == sorted(printed_second)
    assert sorted(set(printed_first) | set(printed_second)) == expected  # nothing skipped
    repeated = set(printed_first) & set(printed_second)
    assert len(repeated) <= 20  # at most one batch printed twice
    assert (
        printed_second[0] <= printed_first[-1] + 1
        or printed_second[0] == expected[expected.index(printed_first[-1]) + 1]
    )


async def _queue_poison_then_valid(settings_url: str, options: IngestOptions) -> AcceptedRequest:
    valid = AcceptedRequest(token=uuid7(), numbers=(5,), accepted_at=datetime.now(UTC))
    async with await aio_pika.connect(settings_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_queues(channel, options)
        poison = aio_pika.Message(b"{not json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id="poison")
        await channel.default_exchange.publish(poison, routing_key=options.queue)
        await Publisher(channel, queue=options.queue, timeout=5).publish(valid)
    return valid


async def test_poison_message_stops_the_line_with_a_clear_error(namespace: Namespace, processes: Processes) -> None:
    settings, env = await migrated_settings(namespace, "poison")
    await _queue_poison_then_valid(settings.rabbitmq.url(), IngestOptions())
    worker = processes.start("ingest", "worker", env=env)
    code = await asyncio.to_thread(worker.proc.wait, 60)
    assert code == 3
    assert any("poison message stops the line" in line for line in worker.errors)
    assert await count_stored(settings) == 0  # nothing after it is stored out of order


async def test_skip_poison_dead_letters_it_and_goes_on(namespace: Namespace, processes: Processes) -> None:
    settings, env = await migrated_settings(namespace, "skippoison")
    options = IngestOptions()
    valid = await _queue_poison_then_valid(settings.rabbitmq.url(), options)
    worker = processes.start("ingest", "worker", "--skip-poison", env=env)

    async def valid_stored() -> bool:
        return await count_stored(settings) == 1

    await wait_until(valid_stored, within=30, what="the request behind the poison stored")
    assert (await stored_requests(settings))[0]["token"] == str(valid.token)
    assert any("dead-lettered" in line for line in worker.errors)
    async with await aio_pika.connect(settings.rabbitmq.url()) as connection:
        channel = await connection.channel()
        dead = await channel.declare_queue(options.dead_letter_queue, passive=True)
        assert dead.declaration_result.message_count == 1
