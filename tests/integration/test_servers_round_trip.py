"""One real round trip per server, with the client library the services use, in this run's namespaces."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import aio_pika
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from orderly.platform.pools import (
    clickhouse_client,
    kafka_config,
    mysql_pool,
    nats_connection,
    postgres_pool,
    rabbitmq_connection,
    redis_client,
)
from orderly.platform.settings import InfraSettings


async def test_postgres_round_trip_with_asyncpg(infra: InfraSettings) -> None:
    async with postgres_pool(infra.postgres) as pool, pool.acquire() as conn:
        await conn.execute("CREATE TABLE rt (id bigint PRIMARY KEY, doc jsonb NOT NULL)")
        async with conn.transaction():
            await conn.execute("INSERT INTO rt VALUES (1, $1::jsonb)", '{"numbers": [1, -2]}')
        assert await conn.fetchval("SELECT doc->'numbers'->>1 FROM rt WHERE id = 1") == "-2"


async def test_mariadb_round_trip_with_asyncmy(infra: InfraSettings) -> None:
    async with mysql_pool(infra.mysql) as pool, pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("CREATE TABLE rt (id BIGINT PRIMARY KEY, total DECIMAL(65,0) NOT NULL)")
        await cur.execute("INSERT INTO rt VALUES (1, %s)", (10**40,))
        await conn.commit()
        await cur.execute("SELECT total FROM rt WHERE id = 1")
        (total,) = await cur.fetchone()
        assert int(total) == 10**40


async def test_redis_round_trip_with_hiredis(infra: InfraSettings) -> None:
    async with redis_client(infra.redis) as redis:
        key = f"{infra.redis.key_prefix}rt"
        assert await redis.set(key, "v", nx=True, ex=30)
        assert not await redis.set(key, "w", nx=True, ex=30), "set-if-absent must refuse a second writer"
        assert await redis.get(key) == b"v"
        assert 0 < await redis.ttl(key) <= 30


async def test_rabbitmq_round_trip_with_publisher_confirms(infra: InfraSettings) -> None:
    async with rabbitmq_connection(infra.rabbitmq) as connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue("rt", durable=True)
        for n in range(3):
            confirmation = await channel.default_exchange.publish(
                aio_pika.Message(str(n).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key="rt"
            )
            assert confirmation is not None
        received = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    received.append(message.body.decode())
                if len(received) == 3:
                    break
        assert received == ["0", "1", "2"]
        await channel.close()


async def test_nats_jetstream_round_trip_with_durable_pull_consumer(infra: InfraSettings) -> None:
    stream = f"{infra.nats.stream_prefix}RT"
    async with nats_connection(infra.nats) as nc:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
        ack = await js.publish(f"{stream}.x", b"one", headers={"Nats-Msg-Id": "m1"})
        dup = await js.publish(f"{stream}.x", b"one", headers={"Nats-Msg-Id": "m1"})
        assert dup.duplicate, "the server drops a repeated Nats-Msg-Id"
        assert dup.seq == ack.seq
        config = ConsumerConfig(durable_name="rt", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
        sub = await js.pull_subscribe(f"{stream}.>", durable="rt", stream=stream, config=config)
        [message] = await sub.fetch(1, timeout=5)
        assert message.data == b"one"
        await message.ack_sync()
        with pytest.raises(asyncio.TimeoutError):
            await sub.fetch(1, timeout=0.5)


def test_clickhouse_round_trip_with_native_driver(infra: InfraSettings) -> None:
    client = clickhouse_client(infra.clickhouse)
    try:
        client.execute("CREATE TABLE rt (id UInt64, at DateTime, name String) ENGINE = MergeTree() ORDER BY id")
        client.execute("INSERT INTO rt (id, at, name) VALUES", [(2, time.time_ns() // 10**9, "b"), (1, 0, "a")])
        assert client.execute("SELECT id, name FROM rt ORDER BY id") == [(1, "a"), (2, "b")]
        server_version = client.execute("SELECT version()")[0][0]
        assert server_version.startswith("18.16")
    finally:
        client.disconnect()


def test_kafka_group_of_three_gets_two_partitions_on_two_members(infra: InfraSettings) -> None:
    topic = f"{infra.kafka.topic_prefix}rt"
    admin = AdminClient(dict(kafka_config(infra.kafka)))
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=30)

    producer = Producer(dict(kafka_config(infra.kafka, **{"enable.idempotence": True, "acks": "all"})))
    for n in range(20):
        producer.produce(topic, key=str(n).encode(), value=str(n).encode())
    assert producer.flush(30) == 0

    group = f"{infra.kafka.topic_prefix}group-{uuid.uuid4().hex[:6]}"
    members = [
        Consumer(
            dict(
                kafka_config(
                    infra.kafka,
                    **{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False},
                )
            )
        )
        for _ in range(3)
    ]
    received: list[bytes] = []
    assigned: dict[int, int] = {}  # member -> partitions held, kept by each member's own rebalance callbacks
    lock = threading.Lock()
    stop = threading.Event()

    def poll(index: int, consumer: Consumer) -> None:
        def on_assign(_consumer: Consumer, partitions: list[object]) -> None:
            with lock:
                assigned[index] = len(partitions)

        def on_revoke(_consumer: Consumer, _partitions: list[object]) -> None:
            with lock:
                assigned[index] = 0

        consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        while not stop.is_set():
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                with lock:
                    received.append(message.value())
                consumer.commit(message=message, asynchronous=False)
        consumer.close()

    threads = [threading.Thread(target=poll, args=(i, c)) for i, c in enumerate(members)]
    for thread in threads:
        thread.start()
    try:
        # Wait until everything is read and the group has settled with all three members joined.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with lock:
                assignments = [assigned.get(i, 0) for i in range(3)]
                if len(received) >= 20 and len(assigned) == 3 and sorted(assignments) == [0, 1, 1]:
                    break
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert sorted(assignments) == [0, 1, 1], f"2 partitions over 3 members, got {assignments}"
    assert sorted(int(v) for v in received) == list(range(20))
