"""Logging: one JSON object per line on stderr, so stdout stays free for the data a process emits."""

from __future__ import annotations

import logging
import sys
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # Client libraries are chatty at INFO; their warnings still come through.
    for noisy in ("aio_pika", "aiormq", "nats", "httpx", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
