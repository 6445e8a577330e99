"""Typed settings of the loms processes (api, relay, init steps)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from orderly.platform.settings import (
    HttpSettings,
    KafkaSettings,
    OrderlySettings,
    PostgresSettings,
    ProbeSettings,
    with_flags,
)

EVENTS_TOPIC = "loms.order-events"
DLQ_TOPIC = "loms.order-events.dlq"
EVENTS_PARTITIONS = 2
REPLICATION_FACTOR = 1
API_PORT = 8401


class LomsOptions(BaseModel):
    """The relay's knobs; the topic names get ``kafka.topic_prefix`` prepended."""

    batch_size: int = Field(default=5000, ge=1, le=50_000, description="outbox rows per relay batch (--batch-size)")
    idle_poll_seconds: float = Field(default=0.05, gt=0, le=10, description="relay poll interval, outbox empty")
    retry_backoff_seconds: float = Field(default=1.0, gt=0, le=60, description="pause before re-sending a failed batch")
    flush_timeout_seconds: float = Field(default=5.0, gt=0, le=600, description="longest flush of one batch")
    # librdkafka message.timeout.ms: how long a batch may wait for the broker before it is retried.
    message_timeout_ms: int = Field(default=30_000, ge=1000, description="librdkafka message.timeout.ms")
    standby_poll_seconds: float = Field(default=1.0, gt=0, le=60, description="how often a standby tries the lock")


class LomsSettings(OrderlySettings):
    postgres: PostgresSettings = PostgresSettings(database="loms")
    kafka: KafkaSettings = KafkaSettings()
    http: HttpSettings = HttpSettings(port=API_PORT)
    loms: LomsOptions = LomsOptions()
    probe: ProbeSettings = ProbeSettings()

    def events_topic(self) -> str:
        return self.kafka.topic_prefix + EVENTS_TOPIC

    def dlq_topic(self) -> str:
        return self.kafka.topic_prefix + DLQ_TOPIC


def loms_settings(**flags: object) -> LomsSettings:
    """Settings from the file, then the environment, then the command-line flags that were given (not None)."""
    return with_flags(LomsSettings(), "loms", **flags)
