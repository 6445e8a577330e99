"""Typed settings of the loms processes (api, relay, init steps)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from orderly.platform.settings import HttpSettings, KafkaSettings, OrderlySettings, PostgresSettings, ProbeSettings

EVENTS_TOPIC = "loms.order-events"
DLQ_TOPIC = "loms.order-events.dlq"
EVENTS_PARTITIONS = 2
REPLICATION_FACTOR = 1
API_PORT = 8401


class LomsOptions(BaseModel):
    """The relay's knobs; the topic names get ``kafka.topic_prefix`` prepended."""

    batch_size: int = Field(default=5000, ge=1, le=50_000)
    idle_poll_seconds: float = Field(default=0.05, gt=0, le=10)
    retry_backoff_seconds: float = Field(default=1.0, gt=0, le=60)
    flush_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    message_timeout_ms: int = Field(default=30_000, ge=1000)
    standby_poll_seconds: float = Field(default=1.0, gt=0, le=60)


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
    settings = LomsSettings()
    changes = {k: v for k, v in flags.items() if v is not None}
    if not changes:
        return settings
    options = LomsOptions.model_validate(settings.loms.model_dump() | changes)
    return settings.model_copy(update={"loms": options})
