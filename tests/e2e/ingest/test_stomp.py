"""ingest over STOMP: a RECEIPT is an acceptance, in the same queue and the same order as HTTP's 202."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from uuid import uuid4

import aio_pika
import pytest

from orderly.ingest.broker import REASON_HEADER
from orderly.ingest.client import NotAcceptedError, StompSender
from orderly.ingest.settings import IngestSettings
from orderly.platform.settings import InfraSettings
from tests.e2e.ingest.conftest import (
    assert_happens_before_order,
    assert_rows_before_exact,
    assert_stored_exactly,
    count_stored,
    migrated_settings,
    printed_events,
    restart_rabbitmq_while_requests_flow,
    send_requests,
    send_stomp_requests,
    start_api,
    stored_requests,
    wait_for_line,
)
from tests.plumbing import Namespace, Processes, ScratchStack, wait_until


def send_raw_frames(settings: InfraSettings, frames: list[tuple[str, dict[str, str]]]) -> None:
    """SEND each (body, headers) to the STOMP entry, one after another, each receipted by the broker."""
    with StompSender(IngestSettings(rabbitmq=settings.rabbitmq)) as sender:
        for body, headers in frames:
            sender.send_frame(body, headers)


async def dead_letters(settings: InfraSettings) -> list[tuple[bytes, str]]:
    """Every message in the dead-letter queue (body, reason), taken off it in order."""
    out: list[tuple[bytes, str]] = []
    async with await aio_pika.connect(settings.rabbitmq.url()) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("ingest.requests.dead", passive=True)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append((message.body, str((message.headers or {}).get(REASON_HEADER))))
    return out


async def test_bad_stomp_frames_store_nothing_and_are_dead_lettered_with_their_reason(
    namespace: Namespace, processes: Processes
) -> None:
    settings, env = await migrated_settings(namespace, "stompbad")
    worker = processes.start("ingest", "worker", "--batch-size", "4", env=env)
    await wait_for_line(worker, "consuming", within=30)  # the worker declares the STOMP entry
    good = [str(uuid4()) for _ in range(3)]
    frames = [
        ("[1, 2]", {"token": good[0]}),
        ("[]", {"token": str(uuid4())}),
        ("[3]", {}),
        ("[4]", {"token": "not-a-uuid"}),
        ("[9223372036854775808]", {"token": str(uuid4())}),
        ("1,2,3", {"token": str(uuid4())}),
        ("[1.5]", {"token": str(uuid4())}),
        ("[5]", {"token": good[1]}),
        ("[6]", {"token": good[1]}),
        ("[7, 8, 9]", {"token": good[2]}),
    ]
    await asyncio.to_thread(send_raw_frames, settings, frames)

    async def three_stored() -> bool:
        return await count_stored(settings) == 3

    await wait_until(three_stored, within=60, what="the three good requests stored")
    rows = await stored_requests(settings)
    assert [row["token"] for row in rows] == good
    assert [json.loads(row["body"])["numbers"] for row in rows] == [[1, 2], [5], [7, 8, 9]]

    parked: list[tuple[bytes, str]] = []

    async def seven_parked() -> bool:
        parked.extend(await dead_letters(settings))
        return len(parked) >= 7

    await wait_until(seven_parked, within=30, what="seven dead letters")
    reasons = [reason for _, reason in parked]
    assert [body for body, _ in parked] == [b"[]", b"[3]", b"[4]", b"[9223372036854775808]", b"1,2,3", b"[1.5]", b"[6]"]
    assert len(reasons) == 7
    assert reasons[0].startswith("no integers")
    assert reasons[1].startswith("missing token")
    assert reasons[2].startswith("token header is not a UUID")
    assert "64-bit" in reasons[3]
    assert reasons[4].startswith("body is not JSON")
    assert reasons[5].startswith("numbers[0] is not an integer")
    assert reasons[6].startswith(f"duplicate token {good[1]}")


async def test_a_send_on_a_connection_that_broke_is_not_accepted_and_raises_nothing_else(namespace: Namespace) -> None:
    settings, _ = await migrated_settings(namespace, "stompbroken")

    def send_on_a_broken_connection() -> str:
        with StompSender(IngestSettings(rabbitmq=settings.rabbitmq), timeout=5) as sender:
            # The socket breaks as a broker restart breaks it: stomp.py's sendall then raises the OSError itself
            # (EPIPE here, EBADF when its reader closed the socket first), not one of its own exceptions.
            sender.connection.transport.socket.shutdown(socket.SHUT_WR)
            try:
                sender.send([1])
            except NotAcceptedError as exc:
                return str(exc)
        return "accepted"

    assert (await asyncio.to_thread(send_on_a_broken_connection)).startswith("STOMP send failed")


async def test_http_and_stomp_clients_come_out_in_real_time_order(namespace: Namespace, processes: Processes) -> None:
    settings, env = await migrated_settings(namespace, "stompmix")
    _, port = start_api(processes, env)
    worker = processes.start("ingest", "worker", env=env)
    await wait_for_line(worker, "consuming", within=30)
    daemon = processes.start("ingest", "daemon", env=env)

    over_http, over_stomp = await asyncio.gather(
        send_requests(port, clients=10, per_client=100),
        send_stomp_requests(settings, clients=10, per_client=100, first_marker=1_000_000),
    )
    sent = over_http + over_stomp
    accepted = [s for s in sent if s.status == 202]
    assert len(accepted) == 2000, {s.status for s in sent}
    events = await printed_events(daemon, accepted, within=120)
    assert len(events) == sum(len(s.numbers) for s in accepted)
    assert_happens_before_order(accepted, events)
    assert_rows_before_exact(events)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_broker_restart_loses_no_receipted_stomp_request(
    namespace: Namespace, processes: Processes, scratch_stack: Callable[..., ScratchStack]
) -> None:
    scratch = scratch_stack("ingest-stomp", "rabbitmq")
    settings, env = await migrated_settings(namespace, "stomprestart", scratch=scratch)
    worker = processes.start("ingest", "worker", "--batch-size", "50", env=env)
    await wait_for_line(worker, "consuming", within=30)  # the worker declares the STOMP entry

    stop = asyncio.Event()
    flowing = asyncio.create_task(send_stomp_requests(settings, clients=8, per_client=1_000_000, stop=stop))
    try:
        await restart_rabbitmq_while_requests_flow(scratch, settings)
    finally:
        stop.set()  # the sender threads end with the test, whatever happened
        sent = await flowing
    unreceipted = [s for s in sent if s.status != 202]
    assert unreceipted, "the broker restart failed no SEND; the test proved nothing"

    # One more receipted request: the queue is FIFO, so once it is stored, everything receipted before it is too.
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orderly", "ingest", "send", "--stomp", "--", "-1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    last = done.stdout.strip()

    async def last_stored() -> bool:
        return last in {row["token"] for row in await stored_requests(settings)}

    await wait_until(last_stored, within=60, what="the last request stored")
    rows = await stored_requests(settings)
    receipted = {s.token for s in sent if s.status == 202} | {last}
    stored_tokens = {row["token"] for row in rows}
    assert receipted <= stored_tokens, f"{len(receipted - stored_tokens)} receipted requests were lost"
    # A SEND whose receipt never came may or may not have been queued: it is stored at most once, never promised.
    assert_stored_exactly(rows, stored_tokens)
