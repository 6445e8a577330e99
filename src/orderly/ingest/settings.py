"""Typed settings of the ingest processes (API, worker, daemon)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from orderly.platform.settings import (
    HttpSettings,
    OrderlySettings,
    PostgresSettings,
    ProbeSettings,
    RabbitMQSettings,
)

API_PORT = 8101


class IngestOptions(BaseModel):
    queue: str = Field(default="ingest.requests", description="RabbitMQ queue of accepted requests")
    dead_letter_queue: str = Field(default="ingest.requests.dead", description="queue of poison messages")
    # STOMP clients SEND to /exchange/<stomp_exchange>: a fanout exchange bound to the request queue, so their
    # requests join the one queue and the worker knows them by the exchange they came through (docs/ingest.md).
    stomp_exchange: str = Field(
        default="ingest.stomp", min_length=1, description="exchange STOMP clients SEND to (bound to the queue)"
    )
    stomp_max_body_bytes: int = Field(
        default=64 * 1024, ge=64, description="largest STOMP request body; a larger one is dead-lettered"
    )
    # Classic: the redelivery-order test (tests/integration/ingest/test_queue_order.py) decides; see docs/ingest.md.
    queue_type: Literal["classic", "quorum"] = Field(default="classic", description="classic or quorum (see docs)")
    max_numbers: int = Field(default=1000, ge=1, description="numbers per request at most; more answer 413")
    max_query_bytes: int = Field(default=16 * 1024, ge=64, description="query string bytes at most; more answer 414")
    publish_timeout_s: float = Field(default=5.0, gt=0, description="no broker confirm within this answers 503")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After of the API's 503 answers")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="requests per worker transaction (--batch-size)")
    max_wait_ms: int = Field(default=5, ge=0, description="longest wait to fill a batch after its first message")
    max_attempts: int = Field(default=5, ge=1, description="permanent failures before a message counts as poison")
    skip_poison: bool = Field(default=False, description="dead-letter a poison message instead of stopping")
    burst: bool = Field(default=False, description="the worker exits once the queue is empty (tests, benchmarks)")
    daemon_name: str = Field(default="default", description="the daemon's cursor (one per independent reader)")
    daemon_batch: int = Field(default=1000, ge=1, description="events per daemon read and cursor update")
    daemon_poll_ms: int = Field(default=500, ge=10, description="the daemon's polling fallback interval")
    log_file: Path | None = Field(default=None, description="the daemon also writes its lines to this file")
    log_file_bytes: int = Field(default=50 * 1024 * 1024, ge=1024, description="size at which the file rotates")
    log_file_backups: int = Field(default=5, ge=0, description="rotated files kept")


class IngestSettings(OrderlySettings):
    postgres: PostgresSettings = PostgresSettings()
    rabbitmq: RabbitMQSettings = RabbitMQSettings()
    http: HttpSettings = HttpSettings(port=API_PORT)
    ingest: IngestOptions = IngestOptions()
    probe: ProbeSettings = ProbeSettings()
