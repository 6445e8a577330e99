"""The init step's Kafka half against the real broker: idempotent, and loud about a topic of another shape."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from confluent_kafka.admin import NewTopic

from orderly.loms.kafka_admin import admin_client, existing_shape, init_topics
from orderly.loms.settings import LomsSettings
from tests.plumbing import Namespace, infra_env


async def test_init_topics_creates_two_partitions_and_a_dlq_and_is_idempotent(namespace: Namespace) -> None:
    infra = await namespace.settings("topics-ok")
    settings = LomsSettings(kafka=infra.kafka)
    assert await asyncio.to_thread(init_topics, settings) == [settings.events_topic(), settings.dlq_topic()]
    assert await asyncio.to_thread(init_topics, settings) == []
    admin = admin_client(settings.kafka)
    shape = existing_shape(admin, settings.events_topic())
    assert shape is not None
    assert (shape.partitions, shape.replication) == (2, 1)


async def test_init_topics_fails_loudly_when_the_topic_has_another_shape(namespace: Namespace) -> None:
    infra = await namespace.settings("topics-bad")
    settings = LomsSettings(kafka=infra.kafka)
    admin = admin_client(settings.kafka)
    topic = settings.events_topic()
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=30)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orderly", "loms", "init-topics"],
        env={**infra_env(infra), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: topic ")
    assert "3 partitions" in last
    assert "needs 2" in last
