"""The relay in-process against real PostgreSQL and Kafka: order, keys, deletion after acks, one active relay."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import asyncpg
import pytest

from orderly.loms import repository as repo
from orderly.loms import service
from orderly.loms.domain import Item, Order, OrderStatus, order_event
from orderly.loms.relay import RELAY_LOCK_KEY, new_producer, reach_broker, run_relay
from orderly.platform.lifecycle import Shutdown
from orderly.platform.pools import postgres_pool
from tests.loms_support import prepare, read_topic
from tests.plumbing import Namespace, wait_until


async def test_relay_publishes_the_outbox_in_order_keyed_by_order_and_then_empties_it(namespace: Namespace) -> None:
    loms = await prepare(namespace, "relay-order")
    settings = loms.settings.model_copy(update={"loms": loms.settings.loms.model_copy(update={"batch_size": 7})})
    async with postgres_pool(settings.postgres) as pool:
        ids = []
        for n in range(20):
            created = await service.create_order(pool=pool, user=n + 1, items=[Item(1001, 1)])
            ids.append(created.order_id)
            if n % 2:
                await service.pay_order(pool=pool, order_id=created.order_id)
        expected = [r["event_id"] for r in await pool.fetch("SELECT event_id::text FROM outbox ORDER BY id")]
        stats = await run_relay(settings, Shutdown(), burst=True)
        assert stats.published == len(expected) == 50
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    messages = await asyncio.to_thread(read_topic, settings, expect=50)
    assert len(messages) == 50
    by_order: dict[int, list[tuple[int, int, str]]] = {}
    for m in messages:
        event = json.loads(m.value())
        assert m.key() == str(event["order_id"]).encode()
        by_order.setdefault(event["order_id"], []).append((m.partition(), m.offset(), event["status"]))
    for order_id, seen in by_order.items():
        assert len({p for p, _, _ in seen}) == 1, f"order {order_id} spread over partitions"
        statuses = [s for _, _, s in sorted(seen)]
        assert statuses[:2] == ["new", "awaiting payment"]
    assert sorted(json.loads(m.value())["event_id"] for m in messages) == sorted(expected)
    assert set(by_order) == set(ids)


async def test_an_event_whose_transaction_rolled_back_never_reaches_kafka(namespace: Namespace) -> None:
    loms = await prepare(namespace, "relay-rollback")
    async with postgres_pool(loms.settings.postgres) as pool:

        async def write_then_fail() -> None:
            conn: asyncpg.Connection
            async with pool.acquire() as conn, conn.transaction():
                order_id = await repo.insert_order(conn, user=1, items=[Item(1001, 1)])
                await repo.add_outbox(conn, [order_event(Order(order_id, 1, OrderStatus.NEW), OrderStatus.NEW)])
                raise RuntimeError("the request failed after writing")

        with pytest.raises(RuntimeError):
            await write_then_fail()
        committed = await service.create_order(pool=pool, user=2, items=[Item(1001, 1)])
        await run_relay(loms.settings, Shutdown(), burst=True)
    messages = await asyncio.to_thread(read_topic, loms.settings, expect=2, timeout=10)
    assert Counter(json.loads(m.value())["order_id"] for m in messages) == {committed.order_id: 2}


async def test_a_second_relay_stands_by_while_another_holds_the_lock(namespace: Namespace) -> None:
    loms = await prepare(namespace, "relay-standby")
    async with postgres_pool(loms.settings.postgres) as pool:
        await service.create_order(pool=pool, user=1, items=[Item(1001, 1)])
        async with pool.acquire() as holder:
            assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY)
            shutdown = Shutdown()
            standby = asyncio.create_task(run_relay(loms.settings, shutdown))
            await asyncio.sleep(0)  # let it start; what follows waits on real conditions
            for _ in range(40):
                # The standby must not publish while the lock is held.
                assert await pool.fetchval("SELECT count(*) FROM outbox") == 2
                if await pool.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ) or await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_try_advisory_lock%'"
                    " AND pid <> pg_backend_pid()"
                ):
                    break
                await asyncio.sleep(0.05)
            await holder.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)
            await wait_until(lambda: outbox_empty(pool), within=30, what="the standby to take over")
            shutdown.request("test done")
            stats = await standby
    assert stats.published == 2


async def test_a_late_committing_lower_id_goes_out_before_the_same_orders_next_event(namespace: Namespace) -> None:
    loms = await prepare(namespace, "relay-late")
    settings = loms.settings.model_copy(update={"loms": loms.settings.loms.model_copy(update={"batch_size": 10})})
    async with postgres_pool(settings.postgres) as pool:
        late: asyncpg.Connection
        async with pool.acquire() as late:
            tx = late.transaction()
            await tx.start()
            order_id = await repo.insert_order(late, user=1, items=[Item(1001, 1)])
            order = Order(order_id, 1, OrderStatus.NEW, (Item(1001, 1),))
            first = order_event(order, OrderStatus.NEW)
            await repo.add_outbox(late, [first])  # gets a low id, stays invisible for now
            for n in range(30):
                await service.create_order(pool=pool, user=n + 2, items=[Item(1002, 1)])
            shutdown = Shutdown()
            relay = asyncio.create_task(run_relay(settings, shutdown))
            await wait_until(lambda: outbox_empty(pool), within=30, what="the relay to publish the visible rows")
            await tx.commit()
        second = order_event(order, OrderStatus.AWAITING_PAYMENT)
        await _add(pool, second)
        await wait_until(lambda: outbox_empty(pool), within=30, what="the late row and the next event published")
        shutdown.request("test done")
        await relay
    messages = await asyncio.to_thread(read_topic, settings, expect=62)
    mine = [json.loads(m.value())["event_id"] for m in sorted(messages, key=lambda m: (m.partition(), m.offset()))]
    assert mine.index(first["event_id"]) < mine.index(second["event_id"])


async def test_the_relay_has_a_producer_id_before_its_first_claim(namespace: Namespace) -> None:
    """librdkafka asks for the idempotent producer's id again only 500 ms after a failed first try; the relay waits
    for the id before claiming, so its first batch does not sit claimed and unsendable."""
    loms = await prepare(namespace, "relay-pid")
    sender = new_producer(loms.settings)
    try:
        await reach_broker(sender, loms.settings.events_topic(), shutdown=Shutdown())
        assert sender.has_pid.is_set()
    finally:
        await asyncio.to_thread(sender.producer.flush, 2.0)


async def _add(pool: asyncpg.Pool, event: dict[str, object]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await repo.add_outbox(conn, [event])


async def outbox_empty(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval("SELECT count(*) FROM outbox")
