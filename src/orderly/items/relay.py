"""`orderly items relay`: moves outbox rows to JetStream in id order, deleting them only after their PubAcks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from orderly.items import repository as repo
from orderly.items.backoff import Backoff
from orderly.items.settings import ItemsSettings
from orderly.items.stream import ensure_stream, publish_all
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import OUTBOX_OLDEST_AGE, OUTBOX_PENDING, BatchTimer
from orderly.platform.pools import postgres_pool
from orderly.platform.probes import Probes, serve_probes

log = logging.getLogger(__name__)

BATCHES = BatchTimer("items-relay")
TRANSIENT = (nats.errors.Error, JetStreamError, asyncpg.PostgresConnectionError, OSError, TimeoutError)


async def relay_batch(*, pool: asyncpg.Pool, js: JetStreamContext, stream: str, batch_size: int) -> int:
    """Publish the oldest outbox rows and delete them in one transaction; returns how many moved.

    A failed publish raises and rolls back, so the rows stay for the next attempt; a row published but not deleted
    (crash between PubAck and commit) is published again with the same Nats-Msg-Id and dropped by the server.
    """
    async with pool.acquire() as conn, conn.transaction():
        rows = await repo.claim_outbox(conn, limit=batch_size)
        if rows:
            with BATCHES.batch(len(rows)):
                await publish_all(js, stream=stream, rows=rows)
                await repo.delete_outbox(conn, [row.id for row in rows])
    return len(rows)


@asynccontextmanager
async def nats_until_connected(settings: ItemsSettings, shutdown: Shutdown) -> AsyncIterator[NatsClient | None]:
    """A NATS connection that reconnects forever once made; retries the first connect until it works or we stop."""
    backoff = Backoff(cap=settings.items.retry_max_seconds)
    nc: NatsClient | None = None
    while nc is None and not shutdown.requested:
        try:
            nc = await nats.connect(
                settings.nats.url(), max_reconnect_attempts=-1, reconnect_time_wait=0.25, connect_timeout=2
            )
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            log.warning("NATS not reachable, retrying", extra={"error": repr(exc)})
            await shutdown.sleep(backoff.delay())
    try:
        yield nc
    finally:
        if nc is not None:
            # close, not drain: every publish was awaited and every ack sent, and draining a pull subscription
            # waits for a fetch that will never be answered.
            with contextlib.suppress(Exception):
                await nc.close()


def relay_probes(settings: ItemsSettings, pool: asyncpg.Pool, nats_client: Callable[[], NatsClient | None]) -> Probes:
    """The relay's probes: PostgreSQL and NATS answer; the outbox backlog and its oldest row's age.

    Relays claim with SKIP LOCKED, so every running relay is active."""
    probes = Probes(service="items-relay", instance=settings.probe.instance)
    probes.set_role("active")
    pending, age = OUTBOX_PENDING.labels("items"), OUTBOX_OLDEST_AGE.labels("items")

    async def postgres() -> bool:
        return bool(await pool.fetchval("SELECT 1"))

    async def nats_server() -> bool:
        nc = nats_client()
        return nc is not None and nc.is_connected

    async def outbox() -> None:
        async with pool.acquire() as conn:
            rows, oldest = await repo.outbox_backlog(conn)
        pending.set(rows)
        age.set(oldest)

    probes.check("postgres", postgres)
    probes.check("nats", nats_server)
    probes.on_scrape("outbox", outbox)
    return probes


async def run_relay(settings: ItemsSettings, shutdown: Shutdown, *, burst: bool = False) -> None:
    """The relay's composition root; ``burst`` stops once the outbox is empty (tests, one-off runs)."""
    connected: list[NatsClient] = []
    async with (
        postgres_pool(settings.postgres) as pool,
        serve_probes(settings.probe, relay_probes(settings, pool, lambda: connected[0] if connected else None)),
        nats_until_connected(settings, shutdown) as nc,
    ):
        if nc is None:
            return
        connected.append(nc)
        js = nc.jetstream()
        wake = asyncio.Event()
        async with pool.acquire() as listener:
            notify = lambda *_: wake.set()  # noqa: E731 - the callback asyncpg calls on NOTIFY
            await listener.add_listener(repo.OUTBOX_CHANNEL, notify)
            try:
                await _relay_loop(settings, shutdown, pool=pool, js=js, wake=wake, burst=burst)
            finally:
                await listener.remove_listener(repo.OUTBOX_CHANNEL, notify)


async def _relay_loop(
    settings: ItemsSettings,
    shutdown: Shutdown,
    *,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    wake: asyncio.Event,
    burst: bool,
) -> None:
    options = settings.items
    backoff = Backoff(cap=options.retry_max_seconds)
    stream_ready = False
    while not shutdown.requested:
        wake.clear()
        try:
            if not stream_ready:
                await ensure_stream(
                    js, name=settings.stream_name, duplicate_window_seconds=options.duplicate_window_seconds
                )
                stream_ready = True
            moved = await relay_batch(
                pool=pool, js=js, stream=settings.stream_name, batch_size=options.relay_batch_size
            )
        except TRANSIENT as exc:
            delay = backoff.delay()
            log.warning("relay failed, outbox rows wait", extra={"error": repr(exc), "retry_in_s": delay})
            await shutdown.sleep(delay)
            continue
        backoff.reset()
        if moved:
            log.debug("relayed", extra={"events": moved})
        if moved == options.relay_batch_size:
            continue
        if burst and moved == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first(wake, shutdown), timeout=options.relay_idle_seconds)
        # Under load every commit NOTIFYs, and claiming right away moved a handful of rows per transaction (five
        # PostgreSQL round trips each, competing with the API's writes); a short linger lets one claim take them all.
        if moved and options.relay_linger_seconds:
            await shutdown.sleep(options.relay_linger_seconds)


async def _first(wake: asyncio.Event, shutdown: Shutdown) -> None:
    waiters = [asyncio.create_task(wake.wait()), asyncio.create_task(shutdown.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
