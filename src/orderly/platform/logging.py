"""Logging: one JSON object per line on stderr, so stdout stays free for the data a process emits."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
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


class RepeatedAttemptFilter(logging.Filter):
    """Lets a client library's per-attempt reconnect line through once per outage, not once per attempt.

    A line of ``RECONNECT_ATTEMPT_LINES`` passes only when the same line was last written more than ``quiet_s`` ago
    (the rule of ``platform.retry.OutageLog``): a broker down for minutes gives one line, not one every 5 s.
    """

    def __init__(self, *, quiet_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.quiet_s, self._clock = quiet_s, clock
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        if key not in RECONNECT_ATTEMPT_LINES:
            return True
        now = self._clock()
        last = self._last.get(key)
        self._last[key] = now
        return last is None or now - last > self.quiet_s


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
    handler.addFilter(RepeatedAttemptFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # Client libraries are chatty at INFO; their warnings still come through.
    for noisy in ("aio_pika", "aiormq", "nats", "httpx", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
