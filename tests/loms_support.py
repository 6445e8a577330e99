"""Helpers shared by the loms and notifier tests: a fresh loms namespace, reading a topic, waiting for a condition."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from orderly.loms.kafka_admin import init_topics
from orderly.loms.schema import migrate
from orderly.loms.settings import EVENTS_PARTITIONS, LomsSettings
from orderly.platform.pools import kafka_config
from orderly.platform.settings import InfraSettings
from tests.plumbing import Namespace, Spawned, infra_env


@dataclass
class Loms:
    """One private loms world: its own database (migrated, stock seeded) and its own topics."""

    infra: InfraSettings
    settings: LomsSettings

    @property
    def env(self) -> dict[str, str]:
        return infra_env(self.infra)


async def prepare(namespace: Namespace, name: str, *, kafka: Any = None, postgres: Any = None) -> Loms:
    """``kafka`` and ``postgres``: a scratch server's settings to use instead of the shared one's."""
    infra = await namespace.settings(name)
    if kafka is not None:
        infra = infra.model_copy(update={"kafka": kafka.model_copy(update={"topic_prefix": infra.kafka.topic_prefix})})
    if postgres is not None:
        infra = infra.model_copy(update={"postgres": postgres.model_copy(update={"database": infra.postgres.database})})
    settings = LomsSettings(postgres=infra.postgres, kafka=infra.kafka)
    await migrate(settings.postgres)
    await asyncio.to_thread(init_topics, settings)
    return Loms(infra, settings)


def notifier_lines(process: Spawned) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(process.lines) if line.startswith("{")]


def read_topic(settings: LomsSettings, *, expect: int, timeout: float = 60, topic: str | None = None) -> list[Any]:
    """Every message of the topic from the start (blocking), once ``expect`` distinct event ids were read."""
    name = topic or settings.events_topic()
    consumer = Consumer(dict(kafka_config(settings.kafka, **{"group.id": "test-reader", "enable.auto.commit": False})))
    partitions = len(consumer.list_topics(name, timeout=10).topics[name].partitions)
    consumer.assign([TopicPartition(name, p, 0) for p in range(partitions)])
    messages: list[Any] = []
    ids: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(ids) < expect and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is None:
                    messages.append(message)
                    ids.add(_identity(message))
    finally:
        consumer.close()
    return messages


def _identity(message: Any) -> str:
    """An event's id; a message that is not an event counts by its position."""
    try:
        return str(json.loads(message.value())["event_id"])
    except (ValueError, KeyError, TypeError):
        return f"{message.partition()}@{message.offset()}"


def end_offsets(settings: LomsSettings) -> dict[int, int]:
    consumer = Consumer(dict(kafka_config(settings.kafka, **{"group.id": "test-offsets"})))
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(settings.events_topic(), p), timeout=10)[1]
            for p in range(EVENTS_PARTITIONS)
        }
    finally:
        consumer.close()


def produce_events(settings: LomsSettings, events: list[dict[str, Any]]) -> None:
    """Put loms-shaped events straight on the topic (for tests of the notifier alone)."""
    producer = Producer(dict(kafka_config(settings.kafka, **{"enable.idempotence": True, "acks": "all"})))
    for event in events:
        producer.produce(settings.events_topic(), key=str(event["order_id"]).encode(), value=json.dumps(event).encode())
    assert producer.flush(30) == 0
