"""Typed settings of the notifier process."""

from __future__ import annotations

import os
import socket
from typing import Self

from pydantic import BaseModel, Field, model_validator

from orderly.loms.settings import DLQ_TOPIC, EVENTS_TOPIC
from orderly.platform.settings import KafkaSettings, OrderlySettings, ProbeSettings, with_flags


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


PARK_FLUSH_SECONDS = 10.0  # the longest one DLQ delivery is awaited


class NotifierOptions(BaseModel):
    group: str = Field(default="notifier", description="consumer group (kafka.topic_prefix is prepended)")
    instance: str = Field(default_factory=_default_instance, description="name in output lines and Kafka client.id")
    max_attempts: int = Field(default=3, ge=1, le=20, description="processing attempts before the DLQ")
    backoff_seconds: float = Field(default=0.2, gt=0, le=30, description="first retry pause (doubling)")
    backoff_max_seconds: float = Field(default=2.0, gt=0, le=300, description="longest retry pause")
    # Stored offsets are committed in the background this often, and always on revoke and on shutdown.
    commit_interval_ms: int = Field(default=1000, ge=10, description="background commit of stored offsets")
    poll_seconds: float = Field(default=0.5, gt=0, le=5, description="longest wait of one consumer poll")
    # orderly_dead_letters is re-read this often (the DLQ is read again only when its end offsets moved).
    dead_letters_refresh_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="how often the DLQ's waiting dead letters are counted"
    )
    # How long one message may keep trying to reach the DLQ before the member goes back to polling (the message is
    # read again later from its offset). Bounded so that the member never exceeds max_poll_interval_ms and is evicted.
    park_timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="longest try to park one message")
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000, le=3_600_000, description="max.poll.interval.ms")

    @model_validator(mode="after")
    def _one_message_fits_in_a_poll_interval(self) -> Self:
        worst = (self.max_attempts - 1) * self.backoff_max_seconds + self.park_timeout_seconds + PARK_FLUSH_SECONDS
        if worst * 1000 >= self.max_poll_interval_ms:
            raise ValueError(
                f"one message may take {worst:g} s (retries, then parking), not under max_poll_interval_ms "
                f"({self.max_poll_interval_ms} ms): lower max_attempts, backoff_max_seconds or park_timeout_seconds"
            )
        return self


class NotifierSettings(OrderlySettings):
    kafka: KafkaSettings = KafkaSettings()
    notifier: NotifierOptions = NotifierOptions()
    probe: ProbeSettings = ProbeSettings()

    def events_topic(self) -> str:
        return self.kafka.topic_prefix + EVENTS_TOPIC

    def dlq_topic(self) -> str:
        return self.kafka.topic_prefix + DLQ_TOPIC

    def group_id(self) -> str:
        return self.kafka.topic_prefix + self.notifier.group


def notifier_settings(**flags: object) -> NotifierSettings:
    """Settings from the file, then the environment, then the command-line flags that were given (not None)."""
    return with_flags(NotifierSettings(), "notifier", **flags)
