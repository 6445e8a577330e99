"""`orderly items audit`: pulls change events from JetStream and inserts them into ClickHouse in batches.

A batch is flushed at ``audit_batch_size`` events or ``audit_flush_seconds`` after its first event, whichever comes
first, and its messages are acked only after ClickHouse took the insert. While ClickHouse is away the batch is retried
with backoff (one log line when it goes, one when it is back) and nothing is acked, so the events wait in JetStream
(and are redelivered to whoever runs next).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from orderly.items.changelog import ChangeLog
from orderly.items.relay import nats_until_connected, retry_for
from orderly.items.settings import ItemsSettings
from orderly.items.stream import consumer_config, ensure_stream
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import CONSUMER_LAG, BatchTimer
from orderly.platform.pools import clickhouse_client
from orderly.platform.probes import Probes, serve_probes
from orderly.platform.retry import Retry

log = logging.getLogger(__name__)

BATCHES = BatchTimer("items-audit")


class Batcher:
    """Collects up to ``size`` messages, returning at most ``flush_seconds`` after the first one arrived."""

    def __init__(self, subscription: object, *, size: int, flush_seconds: float, idle_seconds: float = 1.0) -> None:
        self._sub = subscription
        self._size, self._flush, self._idle = size, flush_seconds, idle_seconds

    async def collect(self) -> list[Msg]:
        batch: list[Msg] = []
        try:
            batch.extend(await self._sub.fetch(self._size, timeout=self._idle))  # type: ignore[attr-defined]
        except (TimeoutError, nats.errors.TimeoutError):
            return batch
        deadline = time.monotonic() + self._flush
        while len(batch) < self._size:
            remaining = deadline - time.monotonic()
            if remaining <= 0.001:
                break
            try:
                batch.extend(await self._sub.fetch(self._size - len(batch), timeout=remaining))  # type: ignore[attr-defined]
            except (TimeoutError, nats.errors.TimeoutError):
                break
        return batch


async def insert_until_taken(changelog: ChangeLog, batch: list[Msg], retry: Retry) -> bool:
    """Insert the batch, waiting while ClickHouse is away; False when a stop came first."""
    payloads = [message.data for message in batch]
    while True:
        try:
            with BATCHES.batch(len(payloads)):
                rows = await changelog.insert(payloads)
        except Exception as exc:
            # Keep the messages ours while we wait, so JetStream does not hand them out again meanwhile.
            for message in batch:
                with contextlib.suppress(Exception):
                    await message.in_progress()
            if await retry.wait(exc, dependency="clickhouse"):
                return False
            continue
        retry.ok()
        log.info("inserted change events", extra={"rows": rows})  # bench/items.py reads the batch sizes from it
        return True


def audit_probes(
    settings: ItemsSettings, changelog: ChangeLog, jetstream: Callable[[], JetStreamContext | None]
) -> Probes:
    """The audit consumer's probes: NATS and ClickHouse answer; the durable consumer's backlog.

    Every audit process pulls from the same durable consumer, so each is active."""
    probes = Probes(service="items-audit", instance=settings.probe.instance)
    probes.set_role("active")
    lag = CONSUMER_LAG.labels("items", "0")  # a JetStream stream is one ordered log: partition 0

    async def nats_server() -> bool:
        return jetstream() is not None

    async def clickhouse() -> bool:
        return await changelog.ping()

    async def backlog() -> None:
        js = jetstream()
        if js is None:
            return
        info = await js.consumer_info(settings.stream_name, settings.items.consumer, timeout=1.5)
        lag.set((info.num_pending or 0) + (info.num_ack_pending or 0))

    probes.check("nats", nats_server)
    probes.check("clickhouse", clickhouse)
    probes.on_scrape("consumer_lag", backlog)
    return probes


async def run_audit(settings: ItemsSettings, shutdown: Shutdown, *, burst: bool = False) -> None:
    """The audit process's composition root; ``burst`` stops after the first empty fetch.

    While NATS or ClickHouse is away it waits (one log line when a server goes, one when it is back); the batch in
    hand stays unacked, so nothing is lost, and a redelivered event is collapsed by the table's ``FINAL`` reads.
    """
    retry = retry_for(settings, shutdown)
    changelog = ChangeLog(clickhouse_client(settings.clickhouse), database=settings.clickhouse.database)
    connected: list[tuple[NatsClient, JetStreamContext]] = []

    def jetstream() -> JetStreamContext | None:
        return connected[0][1] if connected and connected[0][0].is_connected else None

    try:
        async with (
            serve_probes(settings.probe, audit_probes(settings, changelog, jetstream)),
            nats_until_connected(settings, retry) as nc,
        ):
            if nc is None:
                return
            js = nc.jetstream()
            connected.append((nc, js))
            batcher: Batcher | None = None
            while not shutdown.requested:
                try:
                    if batcher is None:
                        batcher = await _subscribe(js, settings)
                    batch = await batcher.collect()
                except Exception as exc:
                    if await retry.wait(exc, dependency="nats"):
                        return
                    continue
                if not batch:
                    if burst:
                        return
                    continue
                if not await insert_until_taken(changelog, batch, retry):
                    return  # stopping: the batch stays unacked and comes back to the next audit process
                for message in batch:
                    with contextlib.suppress(Exception):  # an ack lost to an outage: redelivered, collapsed by FINAL
                        await message.ack()
    finally:
        await asyncio.to_thread(changelog.close)


async def _subscribe(js: JetStreamContext, settings: ItemsSettings) -> Batcher:
    options = settings.items
    await ensure_stream(js, name=settings.stream_name, duplicate_window_seconds=options.duplicate_window_seconds)
    subscription = await js.pull_subscribe(
        f"{settings.stream_name}.>",
        durable=options.consumer,
        stream=settings.stream_name,
        config=consumer_config(
            durable=options.consumer,
            ack_wait_seconds=options.audit_ack_wait_seconds,
            max_ack_pending=options.audit_batch_size * 4,
        ),
    )
    return Batcher(subscription, size=options.audit_batch_size, flush_seconds=options.audit_flush_seconds)
