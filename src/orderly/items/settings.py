"""Settings of the items processes (API, relay, audit): the resources they use and the service's own options."""

from __future__ import annotations

from pydantic import BaseModel, Field

from orderly.platform.settings import (
    ClickHouseSettings,
    HttpSettings,
    NatsSettings,
    OrderlySettings,
    PostgresSettings,
    ProbeSettings,
    RedisSettings,
)

ITEMS_HTTP_PORT = 8301
LIST_MAX_OFFSET = 10_000


class ItemsOptions(BaseModel):
    cache_ttl_seconds: int = Field(default=60, ge=1, description="lifetime of a cached /items/list page")
    cache_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="Redis socket timeout of the API; past it a list reads PostgreSQL, a write answers 503",
    )
    # Each distinct page is computed and cached, and each move is a row update and an outbox event: both bounded.
    list_max_offset: int = Field(default=LIST_MAX_OFFSET, ge=1, le=2**31, description="largest offset of a list")
    reprioritize_max_moves: int = Field(default=1000, ge=1, le=100_000, description="items one reprioritize may move")
    stream: str = Field(default="ITEMS", description="JetStream stream name, after nats.stream_prefix")
    consumer: str = Field(default="items-audit", description="durable pull consumer of the audit process")
    duplicate_window_seconds: float = Field(default=600, gt=0, description="JetStream Nats-Msg-Id dedupe window")
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000, description="outbox rows per relay transaction")
    relay_idle_seconds: float = Field(default=0.5, gt=0, description="outbox poll interval when no NOTIFY arrives")
    relay_linger_seconds: float = Field(
        default=0.05, ge=0, le=0.5, description="after a batch, wait this long so the next claim gathers more rows"
    )
    audit_batch_size: int = Field(default=1000, ge=1, le=100_000, description="flush ClickHouse at this many events")
    audit_flush_seconds: float = Field(default=1.0, gt=0, description="... or this long after the first one")
    audit_ack_wait_seconds: float = Field(default=30, gt=0, description="JetStream ack wait of the audit consumer")
    audit_max_deliver: int = Field(
        default=5, ge=2, le=1000, description="deliveries of one event before the audit parks it as a dead letter"
    )
    dead_letter_stream: str = Field(
        default="ITEMS_DEAD", description="JetStream stream of parked change events, after nats.stream_prefix"
    )
    retry_max_seconds: float = Field(default=5.0, gt=0, description="cap of the exponential retry backoff")


class ItemsSettings(OrderlySettings):
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    nats: NatsSettings = NatsSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    http: HttpSettings = HttpSettings(port=ITEMS_HTTP_PORT)
    items: ItemsOptions = ItemsOptions()
    probe: ProbeSettings = ProbeSettings()

    @property
    def stream_name(self) -> str:
        return f"{self.nats.stream_prefix}{self.items.stream}"

    @property
    def dead_letter_stream_name(self) -> str:
        return f"{self.nats.stream_prefix}{self.items.dead_letter_stream}"

    @property
    def cache_prefix(self) -> str:
        return f"{self.redis.key_prefix}items:"
