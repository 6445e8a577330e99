"""Helpers for the ingest end-to-end tests: a fresh migrated namespace, running processes, clients, checks."""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from orderly.ingest.client import NotAcceptedError, StompSender
from orderly.ingest.settings import IngestSettings
from orderly.platform.settings import InfraSettings
from tests.plumbing import Namespace, Processes, ScratchStack, Spawned, free_port, infra_env, pg_value, wait_until


def migrate(settings: InfraSettings) -> dict[str, str]:
    """Apply the ingest migrations through the CLI; returns the environment for child processes."""
    env = infra_env(settings)
    done = subprocess.run(
        [sys.executable, "-m", "orderly", "ingest", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return env


async def migrated_settings(
    namespace: Namespace, name: str, *, scratch: ScratchStack | None = None
) -> tuple[InfraSettings, dict[str, str]]:
    """Fresh settings of their own, migrated, and the environment for child processes that use them.

    With ``scratch``, its servers are started and stand in for the shared ones, so the test may stop and restart them.
    """
    if scratch is not None:
        await asyncio.to_thread(scratch.up)
    settings = await namespace.settings(name)
    if scratch is not None:
        private = scratch.settings
        settings = settings.model_copy(update={server: getattr(private, server) for server in scratch.servers})
    return settings, migrate(settings)


def start_api(processes: Processes, env: dict[str, str]) -> tuple[Spawned, int]:
    port = free_port()
    api = processes.start("ingest", "api", "--port", str(port), env=env)
    api.wait_http_ready(port)
    return api, port


async def wait_for_line(process: Spawned, needle: str, *, within: float) -> None:
    """Wait for a stderr line containing ``needle``; fail at once, with its last lines, if the process exits."""

    def seen() -> bool:
        assert process.proc.poll() is None, "\n".join(process.errors[-20:])
        return any(needle in line for line in process.errors)

    await wait_until(seen, within=within, what=f"a log line with {needle!r}")


@dataclass
class Sent:
    marker: int  # a number unique to this request, to find it in the output
    numbers: list[int]
    sent_at: float
    answered_at: float = 0.0
    status: int = 0
    token: str = ""


async def send_requests(
    port: int,
    *,
    clients: int,
    per_client: int,
    first_marker: int = 0,
    stop: asyncio.Event | None = None,
) -> list[Sent]:
    """``clients`` concurrent clients each send ``per_client`` requests one after another (or until ``stop``)."""
    results: list[Sent] = []

    async def one_client(index: int) -> None:
        # One connection per client: a shared httpx pool serialises 50 concurrent users on its own lock.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
            for i in range(per_client):
                if stop is not None and stop.is_set():
                    return
                marker = first_marker + index * per_client + i
                numbers = [marker] + [marker * 10 + k for k in range(marker % 3)]
                sent = Sent(marker=marker, numbers=numbers, sent_at=time.perf_counter())
                try:
                    response = await client.get("/ingest", params=[("n", str(n)) for n in numbers])
                    sent.status = response.status_code
                    if response.status_code == 202:
                        sent.token = response.json()["token"]
                except httpx.TransportError:
                    sent.status = -1
                sent.answered_at = time.perf_counter()
                results.append(sent)

    await asyncio.gather(*(one_client(i) for i in range(clients)))
    return results


async def send_stomp_requests(
    settings: InfraSettings,
    *,
    clients: int,
    per_client: int,
    first_marker: int = 0,
    stop: asyncio.Event | None = None,
) -> list[Sent]:
    """Like ``send_requests``, over STOMP: a request counts as accepted (status 202) when its RECEIPT arrived.

    A request whose receipt did not come records -1 (nothing promised); its client then connects again.
    """
    ingest = IngestSettings(rabbitmq=settings.rabbitmq, postgres=settings.postgres)
    results: list[Sent] = []
    # A client that raises stops the others: the pool's exit waits for every thread, and the test's own ``stop``
    # cannot be set while this coroutine holds the loop there.
    failed = threading.Event()

    def stopped() -> bool:
        return failed.is_set() or (stop is not None and stop.is_set())

    def one_client(index: int) -> None:
        i = 0
        try:
            while i < per_client and not stopped():
                try:
                    with StompSender(ingest, timeout=10) as sender:
                        while i < per_client and not stopped():
                            marker = first_marker + index * per_client + i
                            i += 1
                            numbers = [marker] + [marker * 10 + k for k in range(marker % 3)]
                            sent = Sent(marker=marker, numbers=numbers, sent_at=time.perf_counter(), status=-1)
                            results.append(sent)
                            sent.token = str(sender.send(numbers))
                            sent.status = 202
                            sent.answered_at = time.perf_counter()
                except NotAcceptedError:
                    time.sleep(0.05)  # pacing of this client's reconnects while the broker is away
        except BaseException:
            failed.set()
            raise

    # Threads of their own: the loop's default executor has only cpu_count + 4 threads, and clients that outnumber it
    # would starve every other to_thread call of the test (a server restart among them) until they stop.
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="stomp-client") as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, one_client, i) for i in range(clients)))
    return results


def daemon_events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def assert_happens_before_order(accepted: list[Sent], events: list[dict[str, Any]]) -> None:
    """Every accepted token once, positions in order, and: answered(a) < sent(b) ⇒ a's events before b's."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    positions: dict[str, list[int]] = {}
    values: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        token = event["token"]
        first.setdefault(token, index)
        last[token] = index
        positions.setdefault(token, []).append(event["position"])
        values.setdefault(token, []).append(event["value"])
    for sent in accepted:
        assert positions.get(sent.token) == list(range(len(sent.numbers))), f"token {sent.token} not exactly once"
        assert values[sent.token] == sent.numbers
        assert last[sent.token] - first[sent.token] == len(sent.numbers) - 1, "a request's events are interleaved"
    by_answer = sorted(accepted, key=lambda s: s.answered_at)
    answered = [s.answered_at for s in by_answer]
    prefix_max: list[int] = []
    running = -1
    for sent in by_answer:
        running = max(running, last[sent.token])
        prefix_max.append(running)
    violations = 0
    for sent in accepted:
        before = bisect.bisect_left(answered, sent.sent_at)  # requests answered before this one was sent
        if before and prefix_max[before - 1] > first[sent.token]:
            violations += 1
    assert violations == 0, f"{violations} requests came out before one that was accepted before they were sent"


def assert_rows_before_exact(events: list[dict[str, Any]]) -> None:
    """In output order, each new request saw exactly the rows before it: 0, 1, 2, …"""
    seen: list[int] = []
    for event in events:
        if event["position"] == 0:
            seen.append(event["rows_before"])
    assert seen == list(range(len(seen)))


async def stored_requests(settings: InfraSettings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.postgres.dsn())
    try:
        return await conn.fetch(
            "SELECT request_id, token::text AS token, body, (SELECT row_count FROM requests_counter) AS counter"
            " FROM requests ORDER BY request_id"
        )
    finally:
        await conn.close()


async def count_stored(settings: InfraSettings) -> int:
    return int(await pg_value(settings.postgres.dsn(), "SELECT count(*) FROM requests"))


async def wait_stored(settings: InfraSettings, at_least: int, *, within: float, what: str) -> None:
    async def enough() -> bool:
        return await count_stored(settings) >= at_least

    await wait_until(enough, within=within, what=what)


async def restart_rabbitmq_while_requests_flow(scratch: ScratchStack, settings: InfraSettings) -> None:
    """Restart the scratch RabbitMQ once 100 requests are stored; return when 200 more are stored after it."""
    await wait_stored(settings, 100, within=60, what="requests flowing")
    await asyncio.to_thread(scratch.down, "rabbitmq")
    await asyncio.to_thread(scratch.up, "rabbitmq")
    resumed_from = await count_stored(settings)
    await wait_stored(settings, resumed_from + 200, within=90, what="requests flowing after the restart")


async def printed_events(daemon: Spawned, accepted: list[Sent], *, within: float) -> list[dict[str, Any]]:
    """Wait until the daemon printed as many lines as the accepted requests have numbers; the events it printed."""
    total = sum(len(s.numbers) for s in accepted)

    async def all_out() -> bool:
        return len(daemon.lines) >= total

    await wait_until(all_out, within=within, what=f"{total} daemon lines")
    return daemon_events(daemon.lines)


def assert_stored_exactly(rows: list[asyncpg.Record], tokens: set[str]) -> None:
    """Exactly these tokens, each once, and rows_before = the row count at each insert (= position in the table)."""
    stored = [row["token"] for row in rows]
    assert len(stored) == len(set(stored))
    assert set(stored) == tokens
    assert [json.loads(row["body"])["rows_before"] for row in rows] == list(range(len(rows)))
    assert not rows or rows[0]["counter"] == len(rows)
