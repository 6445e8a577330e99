"""Outages of the servers themselves, on private scratch copies (the shared stack is never restarted)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import aio_pika
import asyncpg
import httpx
import pytest

from orderly.platform.settings import InfraSettings
from tests.e2e.ingest.conftest import (
    Sent,
    assert_stored_exactly,
    daemon_events,
    migrated_settings,
    restart_rabbitmq_while_requests_flow,
    send_requests,
    start_api,
    stored_requests,
    wait_for_line,
    wait_stored,
)
from tests.plumbing import Namespace, Processes, ScratchStack, Spawned, free_port, wait_until

pytestmark = pytest.mark.slow


async def _stored_markers(settings: InfraSettings) -> set[int]:
    conn = await asyncpg.connect(settings.postgres.dsn())
    try:
        rows = await conn.fetch("SELECT (body -> 'numbers' ->> 0)::bigint AS marker FROM requests")
        return {row["marker"] for row in rows}
    finally:
        await conn.close()


@dataclass
class Line:
    """An API and a worker (batches of 50) on a migrated namespace whose ``server`` is a scratch copy to break."""

    scratch: ScratchStack
    settings: InfraSettings
    env: dict[str, str]
    port: int
    worker: Spawned


async def line_on_scratch(
    namespace: Namespace, processes: Processes, scratch_stack: Callable[..., ScratchStack], server: str, name: str
) -> Line:
    scratch = scratch_stack(f"ingest-{server}", server)
    settings, env = await migrated_settings(namespace, name, scratch=scratch)
    _, port = start_api(processes, env)
    worker = processes.start("ingest", "worker", "--batch-size", "50", env=env)
    return Line(scratch, settings, env, port, worker)


async def test_rabbitmq_restart_202_comes_out_and_503_does_not(
    namespace: Namespace, processes: Processes, scratch_stack: Callable[..., ScratchStack]
) -> None:
    line = await line_on_scratch(namespace, processes, scratch_stack, "rabbitmq", "rabbitrestart")
    scratch, settings, port, worker = line.scratch, line.settings, line.port, line.worker

    stop = asyncio.Event()
    flowing = asyncio.create_task(send_requests(port, clients=10, per_client=1_000_000, stop=stop))
    await restart_rabbitmq_while_requests_flow(scratch, settings)
    stop.set()
    sent: list[Sent] = await flowing

    # The queue is FIFO in acceptance order: once a last accepted request is stored, everything before it is done.
    async with httpx.AsyncClient() as client:
        last = await client.get(f"http://127.0.0.1:{port}/ingest?n=-1")
    assert last.status_code == 202

    async def last_stored() -> bool:
        return -1 in await _stored_markers(settings)

    await wait_until(last_stored, within=60, what="the last request stored")
    markers = await _stored_markers(settings)
    accepted = {s.marker for s in sent if s.status == 202}
    refused = {s.marker for s in sent if s.status == 503}
    assert refused, "the broker outage produced no 503; the test proved nothing"
    assert accepted <= markers
    assert not refused & markers
    assert_stored_exactly(
        await stored_requests(settings), {s.token for s in sent if s.status == 202} | {last.json()["token"]}
    )
    assert worker.proc.poll() is None, "the worker rode through the broker restart"
    assert any("rabbitmq reachable again" in line for line in worker.errors)


async def _queue_depth(settings: InfraSettings) -> int:
    """Messages in the queue, ready plus delivered-but-unacked (management statistics, refreshed every few s)."""
    r = settings.rabbitmq
    url = f"http://{r.host}:{r.management_port}/api/queues/{r.vhost}/ingest.requests"
    async with httpx.AsyncClient(auth=(r.user, r.password.get_secret_value())) as client:
        return int((await client.get(url)).json().get("messages", -1))


async def test_postgres_restart_worker_waits_and_acks_nothing_uncommitted(
    namespace: Namespace, processes: Processes, scratch_stack: Callable[..., ScratchStack]
) -> None:
    line = await line_on_scratch(namespace, processes, scratch_stack, "postgres", "ingest-pgrestart")
    scratch, settings, env, port, worker = line.scratch, line.settings, line.env, line.port, line.worker
    daemon = processes.start("ingest", "daemon", env=env)

    before = await send_requests(port, clients=10, per_client=30)
    await wait_stored(settings, 300, within=60, what="the first 300 stored")
    await asyncio.to_thread(scratch.down, "postgres")
    during = await send_requests(port, clients=10, per_client=30, first_marker=300)
    assert all(s.status == 202 for s in during)  # the API does not need PostgreSQL to accept
    await wait_for_line(worker, "postgres unavailable", within=30)

    async def all_still_queued() -> bool:
        return await _queue_depth(settings) == 300

    await wait_until(all_still_queued, within=30, what="the 300 unstored requests to stay in the queue (unacked)")
    await asyncio.to_thread(scratch.up, "postgres")
    await wait_stored(settings, 600, within=90, what="the worker to resume after the restart")
    assert worker.proc.poll() is None
    assert_stored_exactly(await stored_requests(settings), {s.token for s in before + during})

    # The daemon rode through the same restart and printed every stored request's events, resuming from its cursor.
    tokens = {s.token for s in before + during}

    async def all_printed() -> bool:
        return tokens <= {event["token"] for event in daemon_events(daemon.lines)}

    await wait_until(all_printed, within=60, what="the daemon to print every request after the restart")
    for process in (worker, daemon):
        assert process.proc.poll() is None, "\n".join(process.errors[-20:])
        assert any("postgres reachable again" in line for line in process.errors)
        assert sum("postgres unavailable" in line for line in process.errors) == 1, "one line per outage"


async def test_broker_and_database_both_down_gives_503_outcome_unknown_with_the_token(
    namespace: Namespace, processes: Processes, scratch_stack: Callable[..., ScratchStack]
) -> None:
    scratch = scratch_stack("ingest-both", "rabbitmq", "postgres")
    _, env = await migrated_settings(namespace, "bothdown", scratch=scratch)
    api, port = start_api(processes, env)
    await asyncio.to_thread(scratch.down, "postgres")
    await asyncio.to_thread(scratch.down, "rabbitmq")

    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"http://127.0.0.1:{port}/ingest?n=7")
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    body = answer.json()
    assert body["error"] == "outcome_unknown"
    assert len(body["token"]) == 36
    await wait_for_line(api, body["token"], within=10)  # and the log names it


async def test_api_started_while_rabbitmq_is_down_answers_503_and_serves_once_it_is_back(
    namespace: Namespace, processes: Processes, scratch_stack: Callable[..., ScratchStack]
) -> None:
    """A supervisor restarting the API during a broker outage must not see it crash-loop into `failed`."""
    scratch = scratch_stack("ingest-startdown", "rabbitmq")
    settings, env = await migrated_settings(namespace, "startdown", scratch=scratch)
    await asyncio.to_thread(scratch.down, "rabbitmq")
    port = free_port()
    api = processes.start("ingest", "api", "--port", str(port), env=env)
    await wait_for_line(api, "rabbitmq unavailable", within=60)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        refused = await client.get("/ingest?n=1")
        ready = await client.get("/readyz")
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        # broker_unavailable, not outcome_unknown: nothing was sent, so nothing is left to settle in PostgreSQL.
        assert (refused.json()["error"], refused.json()["dependency"]) == ("broker_unavailable", "rabbitmq")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"rabbitmq": False}

        await asyncio.to_thread(scratch.up, "rabbitmq")

        async def accepted() -> bool:
            return (await client.get("/ingest?n=2")).status_code == 202

        await wait_until(accepted, within=60, what="the API to accept once RabbitMQ is back")
        assert (await client.get("/readyz")).status_code == 200
    await wait_for_line(api, "rabbitmq reachable again", within=10)
    assert api.proc.poll() is None, "the API exited instead of waiting for the broker"
    assert sum("rabbitmq unavailable" in line for line in api.errors) == 1, api.errors[-10:]
    # Only the accepted request is queued (no worker runs here): the refused ones were never sent.
    async with await aio_pika.connect(settings.rabbitmq.url()) as connection:
        queue = await (await connection.channel()).declare_queue("ingest.requests", passive=True)
        assert queue.declaration_result.message_count == 1
