"""Settings of the items processes (API, relay, audit): the resources they use and the service's own options."""

from __future__ import annotations

from pydantic import BaseModel, Field

from orderly.platform.settings import (
    ClickHouseSettings,
    HttpSettings,
    NatsSettings,
    OrderlySettings,
    PostgresSettings,
    RedisSettings,
)

ITEMS_HTTP_PORT = 8301


class ItemsOptions(BaseModel):
    cache_ttl_seconds: int = Field(default=60, ge=1, description="lifetime of a cached /items/list page")
    stream: str = Field(default="ITEMS", description="JetStream stream name, after nats.stream_prefix")
    consumer: str = Field(default="items-audit", description="durable pull consumer of the audit process")
    duplicate_window_seconds: float = Field(default=600, gt=0, description="JetStream Nats-Msg-Id dedupe window")
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000)
    relay_idle_seconds: float = Field(default=0.5, gt=0, description="outbox poll interval when no NOTIFY arrives")
    relay_linger_seconds: float = Field(
        default=0.05, ge=0, le=0.5, description="after a batch, wait this long so the next claim gathers more rows"
    )
    audit_batch_size: int = Field(default=1000, ge=1, le=100_000, description="flush ClickHouse at this many events")
    audit_flush_seconds: float = Field(default=1.0, gt=0, description="... or this long after the first one")
    audit_ack_wait_seconds: float = Field(default=30, gt=0)
    audit_max_deliver: int = Field(
        default=5, ge=2, le=1000, description="deliveries of one event before the audit parks it as a dead letter"
    )
    dead_letter_stream: str = Field(
        default="ITEMS_DEAD", description="JetStream stream of parked change events, after nats.stream_prefix"
    )
    dead_letters_refresh_seconds: float = Field(
        default=5.0, gt=0, description="how often the audit re-reads the dead-letter count for its metric"
    )
    retry_max_seconds: float = Field(default=5.0, gt=0, description="cap of the exponential retry backoff")


class ItemsSettings(OrderlySettings):
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    nats: NatsSettings = NatsSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    http: HttpSettings = HttpSettings(port=ITEMS_HTTP_PORT)
    items: ItemsOptions = ItemsOptions()

    @property
    def stream_name(self) -> str:
        return f"{self.nats.stream_prefix}{self.items.stream}"

    @property
    def dead_letter_stream_name(self) -> str:
        return f"{self.nats.stream_prefix}{self.items.dead_letter_stream}"

    @property
    def cache_prefix(self) -> str:
        return f"{self.redis.key_prefix}items:"
