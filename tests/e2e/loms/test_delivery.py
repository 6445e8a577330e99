"""End to end over real PostgreSQL and Kafka: many concurrent orders, relay crashes, a Kafka outage."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from typing import Any

import asyncpg
import httpx
import pytest

from orderly.loms import service
from orderly.loms.domain import Item
from orderly.loms.kafka_admin import admin_client, group_status
from orderly.loms.relay import RELAY_LOCK_KEY
from orderly.platform.pools import postgres_pool
from tests.loms_support import Loms, end_offsets, notifier_lines, prepare, read_topic
from tests.plumbing import Namespace, Processes, ScratchStack, Spawned, free_port, wait_until

ORDERS = 2000
CLIENTS = 16


async def place_orders(url: str, count: int, *, seed: int, skus: list[int]) -> dict[int, list[str]]:
    """Create ``count`` orders from concurrent clients, then pay, cancel or leave each at random."""
    rng = random.Random(seed)
    plans = [rng.choice(["pay", "cancel", "leave"]) for _ in range(count)]
    expected: dict[int, list[str]] = {}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for plan in plans:
        queue.put_nowait(plan)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while not queue.empty():
                plan = queue.get_nowait()
                items = [{"sku": rng.choice(skus), "count": rng.randint(1, 3)}]
                response = await http.post("/order/create", json={"user": rng.randint(1, 50), "items": items})
                assert response.status_code == 200, response.text
                order_id = response.json()["orderID"]
                statuses = ["new", "awaiting payment"]
                if plan != "leave":
                    response = await http.post(f"/order/{plan}", json={"orderID": order_id})
                    assert response.status_code == 200, response.text
                    statuses.append("payed" if plan == "pay" else "cancelled")
                expected[order_id] = statuses

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return expected


def first_seen(lines: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Per order, its events in Kafka order (partition, offset), each event_id once."""
    by_order: dict[int, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for line in sorted(lines, key=lambda x: (x["partition"], x["offset"])):
        if line["event_id"] not in seen:
            seen.add(line["event_id"])
            by_order[line["order_id"]].append(line)
    return by_order


@pytest.mark.slow
async def test_2000_concurrent_orders_reach_notifiers_in_order_spread_over_both_partitions(
    namespace: Namespace, processes: Processes
) -> None:
    loms = await prepare(namespace, "many")
    port = free_port()
    api = processes.start("loms", "api", "--port", str(port), env=loms.env)
    processes.start("loms", "relay", env=loms.env)
    notifiers = [processes.start("notifier", "--instance", f"n{i}", env=loms.env) for i in (1, 2, 3)]
    api.wait_http_ready(port)

    expected = await place_orders(f"http://127.0.0.1:{port}", ORDERS, seed=6, skus=list(range(1001, 1021)))
    assert len(expected) == ORDERS
    total = sum(len(s) for s in expected.values())

    def lines() -> list[dict[str, Any]]:
        return [line for n in notifiers for line in notifier_lines(n)]

    await wait_until(lambda: len({x["event_id"] for x in lines()}) >= total, within=180, what=f"{total} events")
    by_order = first_seen(lines())
    assert set(by_order) == set(expected)
    for order_id, events in by_order.items():
        assert [e["status"] for e in events] == expected[order_id], order_id
        assert len({e["partition"] for e in events}) == 1
        stamps = [e["occurred_at"] for e in events]
        assert stamps == sorted(stamps)
    on_zero = sum(1 for events in by_order.values() if events[0]["partition"] == 0)
    assert 0.45 <= on_zero / ORDERS <= 0.55, on_zero

    printing = {x["instance"] for x in lines()}
    assert len(printing) == 2
    status = group_status(admin_client(loms.settings.kafka), loms.settings.kafka.topic_prefix + "notifier", {})
    assigned = [m for m in status.members if m.assignment]
    assert len(status.members) == 3
    assert len(assigned) == 2
    assert {m.client_id for m in assigned} == printing


@pytest.mark.slow
async def test_kill_9_of_the_relay_mid_batch_loses_no_event_and_the_standby_takes_over(
    namespace: Namespace, processes: Processes
) -> None:
    loms = await prepare(namespace, "relay-kill")
    async with postgres_pool(loms.settings.postgres.model_copy(update={"pool_max": 8})) as pool:
        sem = asyncio.Semaphore(8)

        async def one(n: int) -> None:
            async with sem:
                created = await service.create_order(pool=pool, user=n + 1, items=[Item(1001 + n % 20, 1)])
                await service.pay_order(pool=pool, order_id=created.order_id)

        await asyncio.gather(*(one(n) for n in range(1000)))
        wanted = {r["event_id"] for r in await pool.fetch("SELECT event_id::text FROM outbox")}
        assert len(wanted) == 3000

        # Two relays wait while the test holds the relay lock; on release one becomes active, the other stands by.
        async with pool.acquire() as holder:
            assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY)
            relays = [processes.start("loms", "relay", "--batch-size", "5", env=loms.env) for _ in range(2)]
            for relay in relays:
                await wait_until(lambda r=relay: any("standing by" in e for e in r.errors), within=30, what="standby")
            await holder.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)
        await wait_until(
            lambda: any("relay active" in e for r in relays for e in r.errors), within=30, what="an active relay"
        )
        [active] = [r for r in relays if any("relay active" in e for e in r.errors)]
        [standby] = [r for r in relays if r is not active]
        published = lambda: sum(end_offsets(loms.settings).values())  # noqa: E731
        await wait_until(lambda: published() >= 300, within=60, what="the relay to publish a first part")
        active.kill()
        left = await pool.fetchval("SELECT count(*) FROM outbox")
        assert 0 < left < 3000, "the kill should land while the outbox is being drained"

        # The standby takes the lock once the dead relay's session is gone, and drains the rest.
        await _outbox_empty(pool)
        assert any("relay active" in e for e in standby.errors)
    messages = await asyncio.to_thread(read_topic, loms.settings, expect=3000, timeout=60)
    seen = [json.loads(m.value())["event_id"] for m in messages]
    assert set(seen) == wanted
    assert len(seen) >= len(wanted)  # duplicates allowed, recognisable by event_id


async def _outbox_empty(pool: asyncpg.Pool, within: float = 120) -> None:
    async def empty() -> bool:
        return not await pool.fetchval("SELECT count(*) FROM outbox")

    await wait_until(empty, within=within, what="the outbox to drain")


@pytest.mark.slow
async def test_kafka_down_for_10_s_the_api_keeps_succeeding_and_every_event_arrives_later(
    namespace: Namespace, processes: Processes, scratch_stack: Any
) -> None:
    scratch: ScratchStack = scratch_stack("loms-kafka", "kafka")
    scratch.up()
    loms: Loms = await prepare(namespace, "outage", kafka=scratch.settings.kafka)
    port = free_port()
    api: Spawned = processes.start("loms", "api", "--port", str(port), env=loms.env)
    # A short delivery timeout, so batches fail during the outage and the retry path is exercised too.
    relay = processes.start("loms", "relay", env={**loms.env, "ORDERLY_LOMS__MESSAGE_TIMEOUT_MS": "3000"})
    api.wait_http_ready(port)
    expected: dict[int, list[str]] = {}
    url = f"http://127.0.0.1:{port}"

    async def flow(seconds: float, seed: int) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        batch = 0
        while loop.time() < until:
            expected.update(await place_orders(url, 20, seed=seed * 1000 + batch, skus=[1001, 1002]))
            batch += 1

    await flow(2, 1)
    await asyncio.to_thread(scratch.down, "kafka")
    await flow(10, 2)  # Kafka is down for these 10 s while orders keep flowing
    await asyncio.to_thread(scratch.up, "kafka")
    await flow(2, 3)
    total = sum(len(s) for s in expected.values())
    messages = await asyncio.to_thread(read_topic, loms.settings, expect=total, timeout=150)
    got: dict[int, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for m in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        event = json.loads(m.value())
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            got[event["order_id"]].append(event["status"])
    assert dict(got) == expected
    assert relay.proc.poll() is None, "the relay rode through the outage"
    outage = [line for line in relay.errors if "kafka unavailable" in line]
    assert len(outage) == 1, "the outage is logged once, not per failed batch"
    assert any("kafka reachable again" in line for line in relay.errors)
