"""`orderly kafka status` against the real broker: topic offsets, group members, assignments and lag."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from confluent_kafka import Consumer

from orderly.loms.domain import Order, OrderStatus, order_event
from orderly.loms.kafka_admin import cluster_status
from orderly.platform.pools import kafka_config
from tests.loms_support import prepare, produce_events
from tests.plumbing import Namespace, infra_env


async def test_status_shows_offsets_members_assignments_and_lag(namespace: Namespace) -> None:
    loms = await prepare(namespace, "status")
    settings = loms.settings
    events = [order_event(Order(n, 1, OrderStatus.NEW), OrderStatus.NEW) for n in range(1, 21)]
    await asyncio.to_thread(produce_events, settings, events)
    group = settings.kafka.topic_prefix + "status-readers"
    consumer = Consumer(
        dict(
            kafka_config(
                settings.kafka, **{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
            )
        )
    )
    consumer.subscribe([settings.events_topic()])
    try:
        read = 0
        deadline = time.monotonic() + 60
        while read < 5 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                read += 1
                consumer.commit(message=message, asynchronous=False)
        snapshot = await asyncio.to_thread(cluster_status, settings.kafka)
        parts = snapshot["topics"][settings.events_topic()]
        assert [p.partition for p in parts] == [0, 1]
        assert sum(p.high - p.low for p in parts) == 20
        [status] = [g for g in snapshot["groups"] if g.group_id == group]
        assert len(status.members) == 1
        assert sorted(status.members[0].assignment) == [(settings.events_topic(), 0), (settings.events_topic(), 1)]
        high = {(settings.events_topic(), p.partition): p.high for p in parts}
        assert sum(status.committed.values()) == read  # one committed offset past each message read
        assert set(status.lag) == set(high)
        for key, lag in status.lag.items():
            assert lag == (high[key] - status.committed[key] if key in status.committed else None)
    finally:
        consumer.close()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orderly", "kafka", "status"],
        env={**infra_env(loms.infra), "PATH": "/usr/bin:/bin", "COLUMNS": "250"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert settings.events_topic() in done.stdout
