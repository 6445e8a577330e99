"""Typed settings of the ingest processes (API, worker, daemon)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from orderly.platform.settings import HttpSettings, OrderlySettings, PostgresSettings, RabbitMQSettings

API_PORT = 8101


class IngestOptions(BaseModel):
    queue: str = "ingest.requests"
    dead_letter_queue: str = "ingest.requests.dead"
    # Classic: the redelivery-order test (tests/integration/ingest/test_queue_order.py) decides; see docs/ingest.md.
    queue_type: Literal["classic", "quorum"] = "classic"
    max_numbers: int = Field(default=1000, ge=1)
    max_query_bytes: int = Field(default=16 * 1024, ge=64)
    publish_timeout_s: float = Field(default=5.0, gt=0)
    retry_after_s: int = Field(default=1, ge=1)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    max_wait_ms: int = Field(default=5, ge=0)
    max_attempts: int = Field(default=5, ge=1)
    skip_poison: bool = False
    dead_letters_refresh_s: float = Field(default=5.0, gt=0)
    burst: bool = False
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    daemon_name: str = "default"
    daemon_batch: int = Field(default=1000, ge=1)
    daemon_poll_ms: int = Field(default=500, ge=10)
    log_file: Path | None = None
    log_file_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    log_file_backups: int = Field(default=5, ge=0)


class IngestSettings(OrderlySettings):
    postgres: PostgresSettings = PostgresSettings()
    rabbitmq: RabbitMQSettings = RabbitMQSettings()
    http: HttpSettings = HttpSettings(port=API_PORT)
    ingest: IngestOptions = IngestOptions()
