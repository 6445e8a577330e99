"""Typed settings of the notifier process."""

from __future__ import annotations

import os
import socket

from pydantic import BaseModel, Field

from orderly.loms.settings import DLQ_TOPIC, EVENTS_TOPIC
from orderly.platform.settings import KafkaSettings, OrderlySettings


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class NotifierOptions(BaseModel):
    group: str = "notifier"  # gets kafka.topic_prefix prepended, like the topics
    instance: str = Field(default_factory=_default_instance)
    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_seconds: float = Field(default=0.2, gt=0, le=30)
    backoff_max_seconds: float = Field(default=2.0, gt=0, le=300)
    # Stored offsets are committed in the background this often, and always on revoke and on shutdown.
    commit_interval_ms: int = Field(default=1000, ge=10)
    poll_seconds: float = Field(default=0.5, gt=0, le=5)
    # orderly_dead_letters is re-read this often (the DLQ is read again only when its end offsets moved).
    dead_letters_refresh_seconds: float = Field(default=10.0, gt=0, le=3600)


class NotifierSettings(OrderlySettings):
    kafka: KafkaSettings = KafkaSettings()
    notifier: NotifierOptions = NotifierOptions()

    def events_topic(self) -> str:
        return self.kafka.topic_prefix + EVENTS_TOPIC

    def dlq_topic(self) -> str:
        return self.kafka.topic_prefix + DLQ_TOPIC

    def group_id(self) -> str:
        return self.kafka.topic_prefix + self.notifier.group


def notifier_settings(**flags: object) -> NotifierSettings:
    """Settings from the file, then the environment, then the command-line flags that were given (not None)."""
    settings = NotifierSettings()
    changes = {k: v for k, v in flags.items() if v is not None}
    if not changes:
        return settings
    options = NotifierOptions.model_validate(settings.notifier.model_dump() | changes)
    return settings.model_copy(update={"notifier": options})
