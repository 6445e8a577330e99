"""Dead letters of ingest: a request the database refuses (sent over HTTP's queue or over STOMP) is parked with its
reason, counted, and stored once after the fix and a replay; a bad STOMP frame is listed with its reason."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from uuid_utils.compat import uuid7

from orderly.ingest.broker import (
    DEAD_LETTER_EXCHANGE,
    PARKED_AT_HEADER,
    REASON_HEADER,
    SOURCE_QUEUE_HEADER,
    Publisher,
    declare_queues,
)
from orderly.ingest.domain import AcceptedRequest
from orderly.ingest.settings import IngestOptions, IngestSettings
from orderly.ingest.worker import run_worker
from orderly.platform.lifecycle import Shutdown
from orderly.platform.settings import InfraSettings
from tests.e2e.ingest.conftest import count_stored, migrate, stored_requests, wait_for_line
from tests.e2e.ingest.test_stomp import send_raw_frames
from tests.plumbing import Namespace, Processes, Spawned, dead_letters_listed, free_port, orderly_dlq, wait_until

pytestmark = pytest.mark.slow


def request(*numbers: int) -> AcceptedRequest:
    return AcceptedRequest(token=uuid7(), numbers=numbers, accepted_at=datetime.now(UTC))


async def queue(settings: InfraSettings, *requests: AcceptedRequest, raw: bytes | None = None) -> None:
    options = IngestOptions()
    async with await aio_pika.connect(settings.rabbitmq.url()) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_queues(channel, options)
        if raw is not None:
            message = aio_pika.Message(raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id="malformed-1")
            await channel.default_exchange.publish(message, routing_key=options.queue)
        for accepted in requests:
            await Publisher(channel, queue=options.queue, timeout=5).publish(accepted)


async def park_copy(settings: InfraSettings, accepted: AcceptedRequest) -> None:
    """A second dead copy of a request, as a worker that crashed between parking it and acking it leaves behind."""
    options = IngestOptions()
    async with await aio_pika.connect(settings.rabbitmq.url()) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
        headers: dict[str, Any] = {
            REASON_HEADER: "a copy",
            SOURCE_QUEUE_HEADER: options.queue,
            PARKED_AT_HEADER: datetime.now(UTC).isoformat(),
        }
        message = aio_pika.Message(accepted.to_message(), headers=headers, message_id=str(accepted.token))
        await exchange.publish(message, routing_key=options.dead_letter_queue)


async def run_worker_until_empty(settings: InfraSettings) -> None:
    options = IngestOptions(skip_poison=True, burst=True, max_attempts=1)
    await run_worker(IngestSettings(postgres=settings.postgres, rabbitmq=settings.rabbitmq, ingest=options), Shutdown())


def dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return orderly_dlq(env, *args)


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    return dead_letters_listed(env, "ingest")


def start_worker(processes: Processes, env: dict[str, str]) -> tuple[Spawned, int]:
    """A worker process with --skip-poison, serving its probes and metrics on a port of its own."""
    port = free_port()
    return processes.start("ingest", "worker", "--skip-poison", "--health-port", str(port), env=env), port


async def metric(port: int, sample: str) -> float | None:
    """One sample (name and labels as /metrics prints them) from a process's /metrics; None when it is not there."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)).text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return None


async def wait_for_metric(port: int, sample: str, value: float) -> None:
    async def reached() -> bool:
        return await metric(port, sample) == value

    await wait_until(reached, within=60, what=f"{sample} == {value}")


DEAD = 'orderly_dead_letters{service="ingest"}'
SKIPPED = "ingest_redeliveries_skipped_total"


async def refusing_666(namespace: Namespace, name: str) -> tuple[InfraSettings, dict[str, str]]:
    """A migrated namespace whose events table refuses the value 666: a request holding it can never be stored."""
    settings = await namespace.settings(name)
    env = migrate(settings)
    await execute(settings, "ALTER TABLE events ADD CONSTRAINT no_666 CHECK (value <> 666)")
    return settings, env


async def execute(settings: InfraSettings, sql: str) -> None:
    conn = await asyncpg.connect(settings.postgres.dsn())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_request_the_database_refuses_is_parked_counted_and_after_the_fix_stored_exactly_once(
    namespace: Namespace, processes: Processes
) -> None:
    settings, env = await refusing_666(namespace, "ingestdlq")
    first, refused, last = request(1), request(666, 7), request(2)
    await queue(settings, first, refused, last)

    await run_worker_until_empty(settings)

    assert [row["token"] for row in await stored_requests(settings)] == [str(first.token), str(last.token)]
    worker, port = start_worker(processes, env)
    await wait_for_line(worker, "consuming", within=30)
    await wait_for_metric(port, DEAD, 1)
    [letter] = listed(env)
    assert letter["id"] == str(refused.token)
    assert "no_666" in letter["reason"]
    assert letter["source"] == IngestOptions().queue
    assert json.loads(letter["payload"])["numbers"] == [666, 7]
    shown = dlq(env, "show", "ingest", str(refused.token))
    assert shown.returncode == 0, shown.stderr
    assert "no_666" in shown.stdout
    assert "666" in shown.stdout

    await execute(settings, "ALTER TABLE events DROP CONSTRAINT no_666")  # the fix
    replayed = dlq(env, "replay", "ingest", str(refused.token))
    assert replayed.returncode == 0, replayed.stderr
    assert listed(env) == [], "the dead letter is acked after the broker confirmed the re-publish"

    async def three_stored() -> bool:
        return await count_stored(settings) == 3

    await wait_until(three_stored, within=60, what="the replayed request stored")
    rows = await stored_requests(settings)
    # The replay joins the queue's tail: stored after every request queued before it, whenever it was accepted.
    assert [row["token"] for row in rows] == [str(first.token), str(last.token), str(refused.token)]
    await wait_for_metric(port, DEAD, 0)

    again = dlq(env, "replay", "ingest", str(refused.token))
    assert again.returncode == 1
    assert "no dead letter" in again.stderr
    await park_copy(settings, refused)  # replaying a second copy of the same token stores nothing twice
    assert dlq(env, "replay", "ingest", "--all").returncode == 0
    await wait_for_metric(port, SKIPPED, 1)  # the worker took the copy and skipped it as stored
    assert [row["token"] for row in await stored_requests(settings)] == [str(t.token) for t in (first, last, refused)]


async def test_an_unparsable_message_is_parked_and_its_replay_is_refused(namespace: Namespace) -> None:
    settings = await namespace.settings("ingestbad")
    env = migrate(settings)
    behind = request(3)
    await queue(settings, behind, raw=b"{not json")

    await run_worker_until_empty(settings)

    assert [row["token"] for row in await stored_requests(settings)] == [str(behind.token)]
    [letter] = listed(env)
    assert letter["id"] == "malformed-1"
    assert "not an ingest request" in letter["reason"]
    refused = dlq(env, "replay", "ingest", "malformed-1")
    assert refused.returncode == 1
    assert "stays parked" in refused.stderr
    assert [x["id"] for x in listed(env)] == ["malformed-1"]


async def test_stomp_requests_are_parked_in_the_same_place_and_a_replay_goes_back_through_stomp(
    namespace: Namespace, processes: Processes
) -> None:
    settings, env = await refusing_666(namespace, "ingeststompdlq")
    worker, port = start_worker(processes, env)
    await wait_for_line(worker, "consuming", within=30)  # the worker declares the STOMP entry
    refused, good = str(uuid7()), str(uuid7())
    frames = [("[666]", {"token": refused}), ("[1]", {}), ("[2]", {"token": good})]
    await asyncio.to_thread(send_raw_frames, settings, frames)

    await wait_for_metric(port, DEAD, 2)
    assert [row["token"] for row in await stored_requests(settings)] == [good]
    letters = listed(env)
    assert [x["payload"] for x in letters] == ["[666]", "[1]"]
    assert "no_666" in letters[0]["reason"]
    assert letters[0]["details"]["exchange"] == IngestOptions().stomp_exchange
    assert letters[0]["details"]["token"] == refused
    assert letters[1]["reason"].startswith("missing token")
    assert len({x["id"] for x in letters}) == 2, "every dead letter has an id of its own"

    refused_again = dlq(env, "replay", "ingest", letters[1]["id"])
    assert refused_again.returncode == 1
    assert "stays" in refused_again.stderr
    await execute(settings, "ALTER TABLE events DROP CONSTRAINT no_666")  # the fix
    replayed = dlq(env, "replay", "ingest", letters[0]["id"])
    assert replayed.returncode == 0, replayed.stderr

    async def both_stored() -> bool:
        return await count_stored(settings) == 2

    await wait_until(both_stored, within=60, what="the replayed STOMP request stored")
    rows = await stored_requests(settings)
    assert [row["token"] for row in rows] == [good, refused]
    assert [json.loads(row["body"])["numbers"] for row in rows] == [[2], [666]]
    await wait_for_metric(port, DEAD, 1)
    assert [x["id"] for x in listed(env)] == [letters[1]["id"]]
