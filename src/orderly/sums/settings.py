"""Typed settings of the sums processes: MySQL, Redis, HTTP and the service's own options."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from orderly.platform.settings import HttpSettings, MySQLSettings, OrderlySettings, RedisSettings

API_PORTS = (8201, 8202, 8203)


class SumsOptions(BaseModel):
    """Knobs of the idempotency mechanism and the commit batcher (env ``ORDERLY_SUMS__<NAME>``)."""

    # reference: the seed's design, kept as the benchmark's baseline only.
    mode: Literal["batched", "reference"] = Field(default="batched", description="batched or reference (benchmark)")
    key_ttl_s: int = Field(default=86_400, ge=1, description="how long a key's response is remembered (Redis, MySQL)")
    in_progress_ttl_ms: int = Field(default=10_000, ge=100, description="lifetime of the Redis in-progress mark")
    batch_max: int = Field(default=256, ge=1, le=5_000, description="requests sharing one transaction at most")
    batch_linger_ms: float = Field(default=0.0, ge=0, le=100, description="extra wait to fill a batch (0: none)")
    # Transactions in flight per instance. 1: every writer waits on the same hot row anyway, and one flusher lets the
    # queue grow into bigger batches, so fewer transactions and less CPU per request (A/B, 3 instances, 64 connections:
    # 1 beat 2 in three of three pairs, +32 % req/s on average).
    concurrent_batches: int = Field(default=1, ge=1, le=16, description="transactions in flight per instance")
    # Requests waiting for a commit, per instance, at most; one more is answered 503 + Retry-After at once instead of
    # queueing without bound while MySQL is slow (memory and latency would grow with the backlog).
    queue_max: int = Field(default=10_000, ge=1, le=1_000_000, description="requests waiting for a commit, at most")
    purge_interval_s: float = Field(default=60.0, gt=0, description="period of the expired-key purge (every instance)")
    purge_batch: int = Field(default=1_000, ge=1, description="rows deleted per purge statement")
    redis_timeout_ms: int = Field(default=1_000, ge=10, description="a slower Redis call counts as Redis down")
    redis_retry_after_s: float = Field(default=1.0, ge=0, description="after a Redis failure, skip Redis this long")


class SumsSettings(OrderlySettings):
    mysql: MySQLSettings = MySQLSettings()
    redis: RedisSettings = RedisSettings()
    http: HttpSettings = HttpSettings(port=API_PORTS[0])
    sums: SumsOptions = SumsOptions()
