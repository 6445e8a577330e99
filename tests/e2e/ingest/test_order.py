"""The main promise: whatever the concurrency, events come out of the daemon in acceptance order."""

from __future__ import annotations

from pathlib import Path

import aio_pika
import httpx

from orderly.platform.settings import InfraSettings
from tests.e2e.ingest.conftest import (
    assert_happens_before_order,
    assert_rows_before_exact,
    count_stored,
    daemon_events,
    migrate,
    migrated_settings,
    printed_events,
    send_requests,
    start_api,
)
from tests.plumbing import Namespace, Processes, wait_until


async def test_concurrent_requests_come_out_in_acceptance_order(namespace: Namespace, processes: Processes) -> None:
    _, env = await migrated_settings(namespace, "order")
    _, port = start_api(processes, env)
    processes.start("ingest", "worker", env=env)
    daemon = processes.start("ingest", "daemon", env=env)

    sent = await send_requests(port, clients=50, per_client=100)
    accepted = [s for s in sent if s.status == 202]
    assert len(accepted) == 5000, {s.status for s in sent}
    events = await printed_events(daemon, accepted, within=120)
    assert len(events) == sum(len(s.numbers) for s in accepted)
    assert [e["event_id"] for e in events] == sorted(e["event_id"] for e in events)
    assert_happens_before_order(accepted, events)
    assert_rows_before_exact(events)


async def test_bad_input_is_rejected_naming_the_parameter_and_nothing_is_queued(
    namespace: Namespace, processes: Processes
) -> None:
    settings, env = await migrated_settings(namespace, "contract")
    _, port = start_api(processes, env)
    cases = {
        "": (400, "n"),
        "n=abc": (400, "n[0]"),
        "n=1&n=2.5": (400, "n[1]"),
        "n=9223372036854775808": (400, "n[0]"),
        "numbers=1,x": (400, "numbers[1]"),
        "&".join(["n=1"] * 1001): (413, "n"),
        "n=" + "7" * 16400: (414, "query"),
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for query, (status, field) in cases.items():
            response = await client.get(f"/ingest?{query}")
            assert response.status_code == status, query[:40]
            body = response.json()
            assert [f["field"] for f in body["fields"]] == [field]
            assert "token" not in body

    async with await aio_pika.connect(settings.rabbitmq.url()) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("ingest.requests", passive=True)
        assert queue.declaration_result.message_count == 0
    assert await count_stored(settings) == 0


async def test_curl_example_prints_two_lines_in_order_also_to_the_log_file(
    infra: InfraSettings, processes: Processes, tmp_path: Path
) -> None:
    env = migrate(infra)
    _, port = start_api(processes, env)
    processes.start("ingest", "worker", env=env)
    log_file = tmp_path / "events.log"
    daemon = processes.start("ingest", "daemon", "--name", "curl-example", "--log-file", str(log_file), env=env)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/ingest?n=1&n=2")
    assert response.status_code == 202
    token = response.json()["token"]

    async def two_lines() -> bool:
        return sum(token in line for line in daemon.lines) == 2

    await wait_until(two_lines, within=30, what="two daemon lines")
    mine = [e for e in daemon_events(daemon.lines) if e["token"] == token]
    assert [e["value"] for e in mine] == [1, 2]

    def logged() -> list[dict[str, object]]:
        text = log_file.read_text() if log_file.exists() else ""
        return [e for e in daemon_events(text.splitlines()) if e["token"] == token]

    async def in_file() -> bool:
        return len(logged()) == 2

    await wait_until(in_file, within=10, what="the two lines in the log file")
    assert logged() == mine
