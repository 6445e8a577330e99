"""`orderly items relay`: moves outbox rows to JetStream in id order, deleting them only after their PubAcks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import nats
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from orderly.items import repository as repo
from orderly.items.settings import ItemsSettings
from orderly.items.stream import ensure_stream, publish_all
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import BatchTimer
from orderly.platform.pools import postgres_pool, quiet_nats_callback
from orderly.platform.probes import Probes, outbox_relay_probes, serve_probes
from orderly.platform.retry import Retry, StoppedError

log = logging.getLogger(__name__)

BATCHES = BatchTimer("items-relay")


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
async def nats_until_connected(settings: ItemsSettings, retry: Retry) -> AsyncIterator[NatsClient | None]:
    """A NATS connection that reconnects forever once made; the first connect is retried until it works or we stop
    (None then)."""
    nc: NatsClient | None = None
    with contextlib.suppress(StoppedError):
        nc = await retry.call(
            lambda: nats.connect(
                settings.nats.url(),
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                error_cb=quiet_nats_callback,
                disconnected_cb=quiet_nats_callback,
            ),
            dependency="nats",
            address=settings.nats.address(),
        )
    try:
        yield nc
    finally:
        if nc is not None:
            # close, not drain: every publish was awaited and every ack sent, and draining a pull subscription
            # waits for a fetch that will never be answered.
            with contextlib.suppress(Exception):
                await nc.close()


def retry_for(settings: ItemsSettings, shutdown: Shutdown) -> Retry:
    return Retry(shutdown, first=0.1, cap=settings.items.retry_max_seconds, logger=log)


def relay_probes(settings: ItemsSettings, pool: asyncpg.Pool, nats_client: Callable[[], NatsClient | None]) -> Probes:
    """The relay's probes: PostgreSQL and NATS answer; the outbox backlog and its oldest row's age.

    Relays claim with SKIP LOCKED, so every running relay is active."""
    probes = outbox_relay_probes(
        service="items-relay", instance=settings.probe.instance, outbox="items", pool=pool, backlog=repo.outbox_backlog
    )
    probes.set_role("active")

    async def nats_server() -> bool:
        nc = nats_client()
        return nc is not None and nc.is_connected

    probes.check("nats", nats_server)
    return probes


async def run_relay(settings: ItemsSettings, shutdown: Shutdown, *, burst: bool = False) -> None:
    """The relay's composition root; ``burst`` stops once the outbox is empty (tests, one-off runs).

    Any failure of PostgreSQL or NATS ends the session (pool, LISTEN connection) and a new one starts once the
    server answers again; the outbox rows wait meanwhile, and nothing is deleted that was not PubAcked.
    """
    retry = retry_for(settings, shutdown)
    connected: list[NatsClient] = []
    # The probes get a small pool of their own: it outlives the relay's sessions, which end with every outage.
    probe_db = settings.postgres.model_copy(update={"pool_min": 0, "pool_max": 1})
    async with (
        postgres_pool(probe_db) as probe_pool,
        serve_probes(settings.probe, relay_probes(settings, probe_pool, lambda: connected[0] if connected else None)),
        nats_until_connected(settings, retry) as nc,
    ):
        if nc is None:
            return
        connected.append(nc)
        js = nc.jetstream()
        while not shutdown.requested:
            try:
                await _session(settings, shutdown, js=js, retry=retry, burst=burst)
            except Exception as exc:
                if await retry.wait(exc, dependency="postgres"):
                    return
                continue
            return  # stopped, or (burst) the outbox is empty


async def _session(
    settings: ItemsSettings, shutdown: Shutdown, *, js: JetStreamContext, retry: Retry, burst: bool
) -> None:
    wake = asyncio.Event()
    # pool_min 0: a pool with a floor re-opens its connections on its own while the server is away, and asyncpg logs
    # each failed attempt with a traceback; this session ends at the first failure and the Retry logs the outage once.
    session_db = settings.postgres.model_copy(update={"pool_min": 0})
    async with postgres_pool(session_db) as pool:
        # A connection of its own, not one from the pool: when the server goes away it is simply dropped with the
        # session (a pooled connection would have to give its listener back first, and it may be dead by then).
        listener = await asyncpg.connect(settings.postgres.dsn())
        try:
            await listener.add_listener(repo.OUTBOX_CHANNEL, lambda *_: wake.set())
            await _relay_loop(settings, shutdown, pool=pool, js=js, wake=wake, retry=retry, burst=burst)
        finally:
            listener.terminate()


async def _relay_loop(
    settings: ItemsSettings,
    shutdown: Shutdown,
    *,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    wake: asyncio.Event,
    retry: Retry,
    burst: bool,
) -> None:
    options = settings.items
    await ensure_stream(js, name=settings.stream_name, duplicate_window_seconds=options.duplicate_window_seconds)
    while not shutdown.requested:
        wake.clear()
        moved = await relay_batch(pool=pool, js=js, stream=settings.stream_name, batch_size=options.relay_batch_size)
        retry.ok()
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
