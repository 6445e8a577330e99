"""Servers restarting under loms: the API answers 503 (never 500), relay and notifier ride through, nothing is lost."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.loms.test_delivery import first_seen
from tests.e2e.outage_load import run_load, wait_status
from tests.loms_support import notifier_lines, prepare
from tests.plumbing import Namespace, Processes, ScratchStack, free_port, wait_until

pytestmark = pytest.mark.slow


async def test_postgres_and_kafka_restarts_under_load_give_no_5xx_but_503_and_every_answered_order_arrives_in_order(
    namespace: Namespace, processes: Processes, scratch_stack: Callable[..., ScratchStack]
) -> None:
    scratch = scratch_stack("loms-outages", "postgres", "kafka")
    await asyncio.to_thread(scratch.up)
    private = scratch.settings
    loms = await prepare(namespace, "outages", kafka=private.kafka, postgres=private.postgres)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = processes.start("loms", "api", "--port", str(port), env=loms.env)
    relay = processes.start("loms", "relay", env={**loms.env, "ORDERLY_LOMS__MESSAGE_TIMEOUT_MS": "3000"})
    notifier = processes.start("notifier", "--instance", "n1", env=loms.env)
    api.wait_http_ready(port)

    expected: dict[int, list[str]] = {}  # orders whose every step was answered
    uncertain: set[int] = set()  # orders with a step answered 503: its status may or may not have moved
    rng = random.Random(11)

    async def order(http: httpx.AsyncClient, _n: int) -> httpx.Response | None:
        created = await http.post(
            "/order/create", json={"user": rng.randint(1, 50), "items": [{"sku": 1001, "count": 1}]}
        )
        if created.status_code != 200:
            return created
        order_id = created.json()["orderID"]
        expected[order_id] = ["new", "awaiting payment"]
        plan = rng.choice(["pay", "cancel", "info"])
        step = await http.post(f"/order/{plan}", json={"orderID": order_id})
        if step.status_code == 503:
            uncertain.add(order_id)
        elif plan != "info":
            assert step.status_code == 200, step.text
            expected[order_id].append("payed" if plan == "pay" else "cancelled")
        return step

    async def restart(server: str) -> None:
        """Restart ``server`` under a bounded load; the API must answer 503 while it is away, never another 5xx."""
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(url, order, clients=8, max_requests=4000, max_seconds=90, stop=stop))
        await wait_until(lambda: len(expected) >= 20, within=30, what="orders flowing")
        await asyncio.to_thread(scratch.down, server)
        if server == "postgres":
            ready = await wait_status(url, "/readyz", 503, within=10)
            assert ready.headers["retry-after"] == "1"
            assert ready.json()["checks"] == {"postgres": False}
        await asyncio.to_thread(scratch.up, server)
        await wait_status(url, "/readyz", 200, within=60)
        answered = len(expected)
        await wait_until(lambda: len(expected) >= answered + 20, within=60, what=f"orders after the {server} restart")
        stop.set()
        tally = await load
        assert tally.bad == [], [*tally.bad[:3], *(line for line in api.errors if "unhandled" in line)][:6]
        assert tally.transport_errors == 0
        if server == "postgres":
            assert tally.statuses[503] > 0, f"the restart produced no 503; the test proved nothing: {tally.statuses}"

    await restart("postgres")
    await restart("kafka")

    # Every answered order's events reach the notifier, each order's in its own order; the processes never exited.
    wanted = {order_id: statuses for order_id, statuses in expected.items() if order_id not in uncertain}

    def printed() -> dict[int, list[dict[str, Any]]]:
        return first_seen(notifier_lines(notifier))

    def all_printed() -> bool:
        seen = printed()
        return all(len(seen.get(order_id, [])) >= len(statuses) for order_id, statuses in wanted.items())

    await wait_until(all_printed, within=180, what="every answered order's events printed")
    seen = printed()
    for order_id, statuses in wanted.items():
        assert [e["status"] for e in seen[order_id]] == statuses, order_id
    for order_id in uncertain:
        assert [e["status"] for e in seen[order_id]][:2] == ["new", "awaiting payment"]
    for process in (api, relay, notifier):
        assert process.proc.poll() is None, "\n".join(process.errors[-20:])
    assert any("postgres unavailable" in line for line in relay.errors)
    assert any("postgres reachable again" in line for line in relay.errors)
    assert any("kafka unavailable" in line for line in notifier.errors)
    assert any("kafka reachable again" in line for line in notifier.errors)
    for process in (relay, notifier):  # librdkafka's reconnect attempts do not flood the log
        refused = [line for line in process.errors if "Connection refused" in line]
        assert len(refused) <= 5, "\n".join(refused[:10])
