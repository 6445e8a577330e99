"""Probes of a background process: /healthz, /readyz and /metrics on a loopback port of its own.

A worker, relay, consumer or daemon has no web framework; it serves its probes from a small asyncio server in its own
event loop (HTTP parsed by h11), opened in its composition root as ``async with serve_probes(...)``:

- ``/healthz`` answers 200 while the event loop runs, with the role (``active``, ``standby`` or ``starting``);
  answering at all proves the loop is not blocked, so the process can make progress.
- ``/readyz`` runs the process's dependency checks (each bounded by a timeout) and answers 200 or 503; a standby is
  ready and says ``"role": "standby"``.
- ``/metrics`` first runs the process's scrape refreshers (gauges that need a query: outbox, queue depth, lag, dead
  letters), each bounded by a timeout and never raising, then renders the Prometheus text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Literal

import asyncpg
import h11
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from orderly.platform.metrics import ACTIVE, OUTBOX_OLDEST_AGE, OUTBOX_PENDING
from orderly.platform.settings import ProbeSettings

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]
Refresh = Callable[[], Awaitable[None]]
Role = Literal["starting", "active", "standby"]

CHECK_TIMEOUT_S = 1.0
REFRESH_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 16 * 1024


class ProbePortError(RuntimeError):
    """The probe port is taken or cannot be bound; the process refuses to run unobservable."""


class Probes:
    """What a background process tells its probes: its role, its dependency checks, its scrape-time gauges."""

    def __init__(self, *, service: str, instance: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.service, self.instance, self.registry = service, instance, registry
        self.role: Role = "starting"
        self._checks: dict[str, Check] = {}
        self._refreshers: dict[str, Refresh] = {}
        self._timers: dict[str, tuple[Refresh, float]] = {}
        self._failing: set[str] = set()
        self._refreshing: asyncio.Task[None] | None = None
        self._active = ACTIVE.labels(service, instance)
        self._active.set(0)

    def set_role(self, role: Role) -> None:
        """Active (1 in ``orderly_active``) or standby (0); logged once per change."""
        if role != self.role:
            log.info("role changed", extra={"service": self.service, "role": role, "was": self.role})
        self.role = role
        self._active.set(1 if role == "active" else 0)

    def check(self, name: str, check: Check) -> None:
        """Add a dependency check to /readyz (True = the dependency answers)."""
        self._checks[name] = check

    def on_scrape(self, name: str, refresh: Refresh) -> None:
        """Add a refresher that sets gauges right before /metrics renders them."""
        self._refreshers[name] = refresh

    def every(self, seconds: float, name: str, refresh: Refresh) -> None:
        """Add a refresher that runs on a timer while the probes are served (for state /healthz reports, e.g. the
        role, which must not wait for a scrape)."""
        self._timers[name] = (refresh, seconds)

    async def run_timers(self) -> None:
        """Run every timed refresher until cancelled."""

        async def tick(name: str, refresh: Refresh, seconds: float) -> None:
            while True:
                await self._bounded_refresh(name, refresh)
                await asyncio.sleep(seconds)

        await asyncio.gather(*(tick(name, refresh, seconds) for name, (refresh, seconds) in self._timers.items()))

    async def readiness(self) -> dict[str, bool]:
        names = list(self._checks)
        results = await asyncio.gather(*(self._bounded_check(self._checks[n]) for n in names))
        return dict(zip(names, results, strict=True))

    @staticmethod
    async def _bounded_check(check: Check) -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                return bool(await check())
        except Exception:
            return False

    async def refresh(self) -> None:
        """Run every refresher once; concurrent scrapes share one run."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_all())
        await asyncio.shield(self._refreshing)

    async def _refresh_all(self) -> None:
        await asyncio.gather(*(self._bounded_refresh(name, refresh) for name, refresh in self._refreshers.items()))

    async def _bounded_refresh(self, name: str, refresh: Refresh) -> None:
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                await refresh()
        except Exception as exc:
            if name not in self._failing:
                self._failing.add(name)
                log.warning("metric refresh failing; gauges keep their last value", extra={"metric": name,
                            "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            return
        if name in self._failing:
            self._failing.discard(name)
            log.info("metric refresh works again", extra={"metric": name})

    async def metrics(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


def outbox_relay_probes(
    *,
    service: str,
    instance: str,
    outbox: str,
    pool: asyncpg.Pool,
    backlog: Callable[[asyncpg.Connection], Awaitable[tuple[int, float]]],
) -> Probes:
    """What every outbox relay reports: PostgreSQL answers (/readyz); the backlog and its oldest row's age (/metrics).

    ``backlog`` counts the rows of the service's own outbox table; the gauges carry ``outbox`` as their label.
    """
    probes = Probes(service=service, instance=instance)
    pending, age = OUTBOX_PENDING.labels(outbox), OUTBOX_OLDEST_AGE.labels(outbox)

    async def postgres() -> bool:
        return bool(await pool.fetchval("SELECT 1"))

    async def refresh_backlog() -> None:
        async with pool.acquire() as conn:
            rows, oldest = await backlog(conn)
        pending.set(rows)
        age.set(oldest)

    probes.check("postgres", postgres)
    probes.on_scrape("outbox", refresh_backlog)
    return probes


async def _answer(probes: Probes, target: str) -> tuple[int, str, bytes]:
    path = target.split("?", 1)[0]
    if path == "/healthz":
        body: dict[str, object] = {
            "status": "ok",
            "service": probes.service,
            "instance": probes.instance,
            "role": probes.role,
        }
        return 200, "application/json", json.dumps(body).encode()
    if path == "/readyz":
        checks = await probes.readiness()
        ready = all(checks.values())
        body = {"ready": ready, "role": probes.role, "checks": checks}
        return (200 if ready else 503), "application/json", json.dumps(body).encode()
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, await probes.metrics()
    body = {"error": "not_found", "message": f"no such path {path!r}; try /healthz, /readyz or /metrics", "fields": []}
    return 404, "application/json", json.dumps(body).encode()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(4096)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _handler(probes: Probes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request = await _read_request(conn, reader)
            if request is None:
                return
            if request.method not in (b"GET", b"HEAD"):
                status, kind, body = 405, "application/json", b'{"error":"method_not_allowed","fields":[]}'
            else:
                status, kind, body = await _answer(probes, request.target.decode("latin-1"))
            headers = [("content-type", kind), ("content-length", str(len(body))), ("connection", "close")]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            if request.method != b"HEAD":
                writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (h11.RemoteProtocolError, TimeoutError, ConnectionError):
            pass  # a broken or slow client gets no answer; the process does not care
        except asyncio.CancelledError:
            # The process is stopping with a probe in flight. asyncio's stream callback would log a cancelled
            # connection task as an error; nothing awaits this task, so ending it quietly loses nothing.
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return handle


@asynccontextmanager
async def serve_probes(settings: ProbeSettings, probes: Probes) -> AsyncIterator[asyncio.Server | None]:
    """Serve the probes on ``settings.port`` (nothing when it is 0) for the life of the block."""
    if not settings.port:
        yield None
        return
    try:
        server = await asyncio.start_server(_handler(probes), settings.host, settings.port, reuse_address=True)
    except OSError as exc:
        raise ProbePortError(
            f"cannot serve /healthz, /readyz and /metrics on {settings.host}:{settings.port}: {exc.strerror}; "
            "choose another --health-port"
        ) from None
    log.info("probes listening", extra={"url": f"http://{settings.host}:{settings.port}", "service": probes.service})
    timers = asyncio.create_task(probes.run_timers())
    try:
        yield server
    finally:
        timers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timers
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await server.wait_closed()
