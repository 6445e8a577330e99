"""Parking in the DLQ is bounded: a member whose DLQ does not answer goes back to polling before it can be evicted."""

from __future__ import annotations

import time
from typing import Any

import pydantic
import pytest

from orderly.notifier.consumer import Notifier
from orderly.notifier.settings import NotifierOptions, NotifierSettings
from orderly.platform.lifecycle import Shutdown


class BadMessage:
    """A message that can never be printed (not an event), so it goes to the DLQ."""

    def value(self) -> bytes:
        return b"not an event"

    def key(self) -> bytes:
        return b"1"

    def topic(self) -> str:
        return "loms.order-events"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 42


class DeadLetterQueueDown:
    """A producer whose deliveries never complete: every flush leaves the message in its queue."""

    def __init__(self) -> None:
        self.produced = 0

    def produce(self, *_args: Any, **_kwargs: Any) -> None:
        self.produced += 1

    def flush(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.05))
        return 1


async def test_parking_gives_up_within_its_budget_and_leaves_the_offset_unstored() -> None:
    options = NotifierOptions(
        instance="t", max_attempts=1, backoff_seconds=0.01, backoff_max_seconds=0.05, park_timeout_seconds=0.5
    )
    notifier = Notifier(NotifierSettings(notifier=options))
    dlq = DeadLetterQueueDown()
    started = time.monotonic()
    message: Any = BadMessage()
    done = await notifier._handle(message, dlq, Shutdown())
    elapsed = time.monotonic() - started
    assert done is False, "not parked: its offset must not be stored (it is read again)"
    assert dlq.produced >= 2, "parking was retried within the budget"
    assert elapsed < 5, f"parking took {elapsed:.1f} s, past its 0.5 s budget"


def test_settings_whose_worst_message_would_outlast_the_poll_interval_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="max_poll_interval_ms"):
        NotifierOptions(max_attempts=20, backoff_max_seconds=300)
    with pytest.raises(pydantic.ValidationError, match="max_poll_interval_ms"):
        NotifierOptions(park_timeout_seconds=600)
    defaults = NotifierOptions()
    worst = (defaults.max_attempts - 1) * defaults.backoff_max_seconds + defaults.park_timeout_seconds + 10
    assert worst * 1000 < defaults.max_poll_interval_ms
