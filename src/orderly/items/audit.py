"""`orderly items audit`: pulls change events from JetStream and inserts them into ClickHouse in batches.

A batch is flushed at ``audit_batch_size`` events or ``audit_flush_seconds`` after its first event, whichever comes
first, and its messages are acked only after ClickHouse took the insert. While ClickHouse is away the batch is retried
with backoff (one log line when it goes, one when it is back) and nothing is acked, so the events wait in JetStream
(and are redelivered to whoever runs next).

Poison never blocks the stream: an event that cannot be parsed, that ClickHouse refuses because of its values (a batch
refused that way is halved until the refused events are found), or that reaches the consumer's ``max_deliver``-th
delivery is parked in the dead-letter stream with its reason and then acked (orderly.items.deadletters). Which
failure is which comes from the one classification, orderly.platform.errors: transient (an outage) is waited out and
never parked, permanent (a missing table, refused credentials) stops the process, poison is parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from orderly.items.changelog import ChangeLog, MalformedEventError, row_from_payload
from orderly.items.deadletters import dead_letters_waiting, ensure_dead_letter_stream, park
from orderly.items.relay import nats_until_connected, retry_for
from orderly.items.settings import ItemsSettings
from orderly.items.stream import consumer_config, ensure_stream
from orderly.platform.errors import Poison, classify
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import CONSUMER_LAG, DEAD_LETTERS, BatchTimer
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


class RefusedError(Exception):
    """ClickHouse refused these rows because of their values: retrying the same rows cannot help."""


def refused(exc: BaseException) -> bool:
    """A failed insert of change events is the rows' fault: poison by orderly.platform.errors.

    Only the ClickHouse driver runs during an insert, so poison there is ClickHouse refusing the values (a data error
    code) or the driver unable to encode one (TypeError, ValueError, OverflowError). An outage is transient and a
    missing table permanent: neither parks anything.
    """
    return isinstance(classify(exc, dependency="clickhouse"), Poison)


async def insert_until_taken(changelog: ChangeLog, rows: list[tuple[Any, ...]], batch: list[Msg], retry: Retry) -> bool:
    """Insert the rows, waiting while ClickHouse is away; False when a stop came first.

    Raises RefusedError when ClickHouse refuses the rows themselves, PermanentError when waiting cannot help.
    """
    while True:
        try:
            with BATCHES.batch(len(rows)):
                inserted = await changelog.insert_rows(rows)
        except Exception as exc:
            if refused(exc):
                raise RefusedError(f"{type(exc).__name__}: {exc}") from exc
            # Keep the messages ours while we wait, so JetStream does not hand them out again meanwhile.
            for message in batch:
                with contextlib.suppress(Exception):
                    await message.in_progress()
            if await retry.wait(exc, dependency="clickhouse"):
                return False
            continue
        retry.ok()
        log.info("inserted change events", extra={"rows": inserted})  # bench/items.py reads the batch sizes from it
        return True


class Audit:
    """One audit process's handling of a batch: park the poison, insert the rest, ack what is done."""

    def __init__(self, *, settings: ItemsSettings, changelog: ChangeLog, js: JetStreamContext, retry: Retry) -> None:
        self.changelog, self.js, self.retry = changelog, js, retry
        self.dead_stream = settings.dead_letter_stream_name
        self.max_deliver = settings.items.audit_max_deliver

    async def handle(self, batch: list[Msg]) -> bool:
        """True when every message of the batch was inserted or parked (and acked); False when a stop came first.

        A NATS error while parking is raised: the batch stays unacked and comes back after the ack wait.
        """
        good: list[tuple[Msg, tuple[Any, ...]]] = []
        for message in batch:
            delivered = message.metadata.num_delivered
            if delivered >= self.max_deliver:
                # JetStream will not deliver it again: park it rather than let it drop out of the change log silently.
                await self._park(message, f"delivered {delivered} times without an ack (max_deliver); parked")
                continue
            try:
                good.append((message, row_from_payload(message.data)))
            except MalformedEventError as exc:
                await self._park(message, f"cannot be parsed: {exc}")
        return await self._insert_or_isolate(good)

    async def _insert_or_isolate(self, items: list[tuple[Msg, tuple[Any, ...]]]) -> bool:
        if not items:
            return True
        messages = [message for message, _ in items]
        try:
            if not await insert_until_taken(self.changelog, [row for _, row in items], messages, self.retry):
                return False
        except RefusedError as exc:
            if len(items) == 1:
                await self._park(messages[0], f"ClickHouse refused it: {exc}")
                return True
            log.warning(
                "ClickHouse refused a batch; halving it to find the events it refuses", extra={"size": len(items)}
            )
            half = len(items) // 2
            return await self._insert_or_isolate(items[:half]) and await self._insert_or_isolate(items[half:])
        for message in messages:
            with contextlib.suppress(Exception):  # an ack lost to an outage: redelivered, collapsed by FINAL
                await message.ack()
        return True

    async def _park(self, message: Msg, reason: str) -> None:
        """Dead-letter first, ack after: a crash in between parks it again under the same Nats-Msg-Id (dropped)."""
        await park(self.js, dead_stream=self.dead_stream, message=message, reason=reason)
        await message.ack()


def audit_probes(
    settings: ItemsSettings, changelog: ChangeLog, jetstream: Callable[[], JetStreamContext | None]
) -> Probes:
    """The audit consumer's probes: NATS and ClickHouse answer; the durable consumer's backlog; the dead letters.

    Every audit process pulls from the same durable consumer, so each is active."""
    probes = Probes(service="items-audit", instance=settings.probe.instance)
    probes.set_role("active")
    lag = CONSUMER_LAG.labels("items", "0")  # a JetStream stream is one ordered log: partition 0
    dead = DEAD_LETTERS.labels("items")

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

    async def dead_letters() -> None:
        js = jetstream()
        if js is None:
            return
        try:
            dead.set(await dead_letters_waiting(js, settings.dead_letter_stream_name))
        except NotFoundError:  # not made yet: nothing was parked
            dead.set(0)

    probes.check("nats", nats_server)
    probes.check("clickhouse", clickhouse)
    probes.on_scrape("consumer_lag", backlog)
    probes.on_scrape("dead_letters", dead_letters)
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
            audit = Audit(settings=settings, changelog=changelog, js=js, retry=retry)
            batcher: Batcher | None = None
            while not shutdown.requested:
                try:
                    if batcher is None:
                        batcher = await _subscribe(js, settings)
                    batch = await batcher.collect()
                except Exception as exc:
                    if await retry.wait(exc, dependency="nats", address=settings.nats.address()):
                        return
                    continue
                if not batch:
                    if burst:
                        return
                    continue
                try:
                    if not await audit.handle(batch):
                        return  # stopping: the rest of the batch stays unacked and comes back to the next audit
                except Exception as exc:
                    # A park JetStream did not take: the unacked messages come back after the ack wait. (A permanent
                    # fault of ClickHouse or NATS stops the process; anything else unknown is re-raised.)
                    if await retry.wait(exc, dependency="nats", address=settings.nats.address()):
                        return
    finally:
        await asyncio.to_thread(changelog.close)


async def _subscribe(js: JetStreamContext, settings: ItemsSettings) -> Batcher:
    options = settings.items
    await ensure_stream(js, name=settings.stream_name, duplicate_window_seconds=options.duplicate_window_seconds)
    await ensure_dead_letter_stream(js, settings)
    subscription = await js.pull_subscribe(
        f"{settings.stream_name}.>",
        durable=options.consumer,
        stream=settings.stream_name,
        config=consumer_config(
            durable=options.consumer,
            ack_wait_seconds=options.audit_ack_wait_seconds,
            max_ack_pending=options.audit_batch_size * 4,
            max_deliver=options.audit_max_deliver,
        ),
    )
    return Batcher(subscription, size=options.audit_batch_size, flush_seconds=options.audit_flush_seconds)
