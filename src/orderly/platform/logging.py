"""Logging: one JSON object per line on stderr, so stdout stays free for the data a process emits."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

from orderly.platform.settings import LogSettings

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the HTTP request being answered (set by the API's ``Edge``); every log line written meanwhile has it."""


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to a record written while a request is answered (tasks started by it inherit the id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


# The lines aiormq and aio-pika write on every failed attempt to (re)connect, by their format strings: our own
# ``Retry`` / ``OutageLog`` already say when RabbitMQ goes away and comes back. Tripwire:
# tests/unit/test_library_internals.py fails when a failed connect writes a line this filter does not know.
RECONNECT_ATTEMPT_LINES = frozenset(
    {
        ("aiormq.connection", "error when creating transport: %r"),
        ("aio_pika.robust_connection", 'Connection attempt to "%s" failed: %s. Reconnecting after %r seconds.'),
        ("aio_pika.robust_connection", "Reconnect attempt failed %s due to %s: %s. Retrying after %r seconds."),
    }
)


class RepeatFilter(logging.Filter):
    """Lets a client library's repeated line through once per quiet spell, not once per attempt.

    ``key`` names the kind of a record (None: not one this filter judges, it passes). A record passes only when its
    kind was last seen more than ``quiet_s`` ago (the rule of ``platform.retry.OutageLog``): a server down for minutes
    gives one such line, not one per reconnect attempt. Used for aiormq / aio-pika (``reconnect_attempt``) and for
    librdkafka (``platform.pools``).
    """

    def __init__(
        self,
        key: Callable[[logging.LogRecord], Hashable | None],
        *,
        quiet_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.key, self.quiet_s, self._clock = key, quiet_s, clock
        self._last: dict[Hashable, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self.key(record)
        if kind is None:
            return True
        now = self._clock()
        last = self._last.get(kind)
        self._last[kind] = now
        return last is None or now - last > self.quiet_s


def reconnect_attempt(record: logging.LogRecord) -> Hashable | None:
    """The kind of an aiormq / aio-pika per-attempt reconnect line (``RECONNECT_ATTEMPT_LINES``); None for others."""
    kind = (record.name, record.msg)
    return kind if kind in RECONNECT_ATTEMPT_LINES else None


def configure_logging(settings: LogSettings, *, process: str) -> None:
    """Configure the root logger once per process; ``process`` names the process in every record."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                static_fields={"process": process},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RepeatFilter(reconnect_attempt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # Client libraries are chatty at INFO; their warnings still come through.
    for noisy in ("aio_pika", "aiormq", "nats", "httpx", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
