"""The daemon process: every event, in event_id order, as one JSON line on stdout (and optionally a rotating file)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from typing import Any, TextIO

import asyncpg

from orderly.ingest import repository
from orderly.ingest.monitor import daemon_lag
from orderly.ingest.settings import IngestOptions, IngestSettings
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import DAEMON_LAG
from orderly.platform.pools import postgres_pool
from orderly.platform.probes import Probes, serve_probes
from orderly.platform.retry import Retry

log = logging.getLogger(__name__)


class EventSink:
    """Where event lines go: stdout, flushed per batch, and a size-rotated file when configured."""

    def __init__(self, options: IngestOptions, stream: TextIO) -> None:
        self.stream = stream
        self.file: RotatingFileHandler | None = None
        if options.log_file is not None:
            options.log_file.parent.mkdir(parents=True, exist_ok=True)
            self.file = RotatingFileHandler(
                options.log_file, maxBytes=options.log_file_bytes, backupCount=options.log_file_backups, delay=True
            )
            self.file.setFormatter(logging.Formatter("%(message)s"))

    def write(self, events: list[dict[str, Any]]) -> None:
        lines = [json.dumps(event, separators=(",", ":")) for event in events]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        if self.file is not None:
            for line in lines:
                self.file.emit(logging.LogRecord("events", logging.INFO, "", 0, line, None, None))
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


async def _wait(wake: asyncio.Event, shutdown: Shutdown, seconds: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(shutdown.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _setter(event: asyncio.Event) -> Callable[..., None]:
    def notified(*_args: Any) -> None:
        event.set()

    return notified


async def follow(
    *,
    reader: repository.EventReader,
    sink: EventSink,
    wake: asyncio.Event,
    shutdown: Shutdown,
    batch: int,
    poll_s: float,
) -> None:
    """Print events after the persisted cursor; the cursor moves only after a batch is printed (at-least-once)."""
    cursor = await reader.load_cursor()
    log.info("following events", extra={"cursor": cursor})
    while not shutdown.requested:
        wake.clear()  # before reading, so a commit that lands during the read wakes the next round
        events = await reader.events_after(cursor, batch)
        if events:
            sink.write(events)
            cursor = events[-1]["event_id"]
            await reader.save_cursor(cursor)
            if len(events) == batch:
                continue
        await _wait(wake, shutdown, poll_s)


def daemon_probes(settings: IngestSettings, pool: asyncpg.Pool) -> Probes:
    """The daemon's probes: PostgreSQL answers; how many committed events wait to be printed."""
    probes = Probes(service="ingest-daemon", instance=settings.probe.instance)
    probes.set_role("active")

    async def postgres() -> bool:
        return bool(await pool.fetchval("SELECT 1"))

    lag_gauge = DAEMON_LAG.labels(settings.ingest.daemon_name)

    async def lag() -> None:
        async with pool.acquire() as conn:
            lag_gauge.set(await daemon_lag(conn, name=settings.ingest.daemon_name))

    probes.check("postgres", postgres)
    probes.on_scrape("daemon_lag", lag)
    return probes


async def run_daemon(settings: IngestSettings, shutdown: Shutdown, stream: TextIO | None = None) -> None:
    """Composition root of the daemon: its probes, then the event follower."""
    probe_db = settings.postgres.model_copy(update={"pool_min": 0, "pool_max": 1})
    async with postgres_pool(probe_db) as pool, serve_probes(settings.probe, daemon_probes(settings, pool)):
        await _print_events(settings, shutdown, stream)


async def _print_events(settings: IngestSettings, shutdown: Shutdown, stream: TextIO | None) -> None:
    """A reading connection, a LISTEN connection, the sink; reconnects until stopped.

    While PostgreSQL is away it waits (one log line when it goes, one when it is back) and resumes from the persisted
    cursor; a permanent fault (database missing) stops it with one line that names the fix.
    """
    options = settings.ingest
    sink = EventSink(options, stream or sys.stdout)
    retry = Retry(shutdown, dependency="postgres", cap=2.0, logger=log)
    try:
        while not shutdown.requested:
            wake = asyncio.Event()
            conn: asyncpg.Connection | None = None
            listener: asyncpg.Connection | None = None
            try:
                conn = await repository.connect(settings.postgres)
                listener = await asyncpg.connect(settings.postgres.dsn())
                await listener.add_listener(repository.NOTIFY_CHANNEL, _setter(wake))
                retry.ok()
                await follow(
                    reader=repository.EventReader(conn, name=options.daemon_name),
                    sink=sink,
                    wake=wake,
                    shutdown=shutdown,
                    batch=options.daemon_batch,
                    poll_s=options.daemon_poll_ms / 1000,
                )
            except Exception as exc:
                if await retry.wait(exc, dependency="postgres"):
                    break
            finally:
                for connection in (listener, conn):
                    if connection is not None:
                        connection.terminate()
    finally:
        sink.close()
