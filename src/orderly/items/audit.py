"""`orderly items audit`: pulls change events from JetStream and inserts them into ClickHouse in batches.

A batch is flushed at ``audit_batch_size`` events or ``audit_flush_seconds`` after its first event, whichever comes
first, and its messages are acked only after ClickHouse took the insert. While ClickHouse is away the batch is retried
with backoff and nothing is acked, so the events wait in JetStream (and are redelivered to whoever runs next).

Poison never blocks the stream: an event that cannot be parsed, that ClickHouse refuses because of its values (a batch
refused that way is halved until the refused events are found), or that reaches the consumer's ``max_deliver``-th
delivery is parked in the dead-letter stream with its reason and then acked (orderly.items.deadletters). An outage —
refused connections, timeouts, any error not known to be about the data — is retried, never parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.errors
from clickhouse_driver.errors import Error as ClickHouseError
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from orderly.items.backoff import Backoff
from orderly.items.changelog import ChangeLog, MalformedEventError, refused_permanently, row_from_payload
from orderly.items.deadletters import ensure_dead_letter_stream, park, waiting
from orderly.items.relay import nats_until_connected
from orderly.items.settings import ItemsSettings
from orderly.items.stream import consumer_config, ensure_stream
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import DEAD_LETTERS
from orderly.platform.pools import clickhouse_client

log = logging.getLogger(__name__)

NATS_TRANSIENT = (nats.errors.Error, JetStreamError, OSError, TimeoutError)
CLICKHOUSE_TRANSIENT = (ClickHouseError, OSError, EOFError, TimeoutError)


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
    """ClickHouse refused these rows because of their data: retrying the same rows cannot help."""


async def insert_until_taken(
    changelog: ChangeLog, rows: list[tuple[Any, ...]], batch: list[Msg], shutdown: Shutdown, backoff: Backoff
) -> bool:
    """Insert the rows, retrying with backoff while ClickHouse is away; False when a stop came first.

    Raises RefusedError when ClickHouse refuses the rows themselves (never for an outage).
    """
    while True:
        try:
            inserted = await changelog.insert_rows(rows)
        except (*CLICKHOUSE_TRANSIENT, TypeError, ValueError, OverflowError) as exc:
            if refused_permanently(exc):  # the driver encoding a value, or a server data error
                raise RefusedError(f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(exc, CLICKHOUSE_TRANSIENT):
                raise
            delay = backoff.delay()
            log.warning("ClickHouse insert failed, events wait", extra={"error": repr(exc), "retry_in_s": delay})
            # Keep the messages ours while we wait, so JetStream does not hand them out again meanwhile.
            for message in batch:
                with contextlib.suppress(*NATS_TRANSIENT):
                    await message.in_progress()
            if await shutdown.sleep(delay):
                return False
            continue
        backoff.reset()
        log.info("inserted change events", extra={"rows": inserted})
        return True


class Audit:
    """One audit process's handling of a batch: park the poison, insert the rest, ack what is done."""

    def __init__(
        self, *, settings: ItemsSettings, changelog: ChangeLog, js: JetStreamContext, shutdown: Shutdown
    ) -> None:
        self.changelog, self.js, self.shutdown = changelog, js, shutdown
        self.dead_stream = settings.dead_letter_stream_name
        self.max_deliver = settings.items.audit_max_deliver
        self.refresh_seconds = settings.items.dead_letters_refresh_seconds
        self.backoff = Backoff(cap=settings.items.retry_max_seconds)
        self._counted_at = -float("inf")

    async def handle(self, batch: list[Msg]) -> bool:
        """True when every message of the batch was inserted or parked (and acked); False when a stop came first."""
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
            if not await insert_until_taken(
                self.changelog, [row for _, row in items], messages, self.shutdown, self.backoff
            ):
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
            with contextlib.suppress(*NATS_TRANSIENT):
                await message.ack()
        return True

    async def _park(self, message: Msg, reason: str) -> None:
        """Dead-letter first, ack after: a crash in between parks it again under the same Nats-Msg-Id (dropped)."""
        await park(self.js, dead_stream=self.dead_stream, message=message, reason=reason)
        await message.ack()
        self._counted_at = -float("inf")
        await self.count_dead_letters()

    async def count_dead_letters(self) -> None:
        """Refresh orderly_dead_letters{service="items"} (at most every ``dead_letters_refresh_seconds``)."""
        now = time.monotonic()
        if now - self._counted_at < self.refresh_seconds:
            return
        self._counted_at = now
        with contextlib.suppress(*NATS_TRANSIENT):
            DEAD_LETTERS.labels("items").set(await waiting(self.js, self.dead_stream))


async def run_audit(settings: ItemsSettings, shutdown: Shutdown, *, burst: bool = False) -> None:
    """The audit process's composition root; ``burst`` stops after the first empty fetch."""
    options = settings.items
    changelog = ChangeLog(clickhouse_client(settings.clickhouse), database=settings.clickhouse.database)
    try:
        async with nats_until_connected(settings, shutdown) as nc:
            if nc is None:
                return
            js = nc.jetstream()
            audit = Audit(settings=settings, changelog=changelog, js=js, shutdown=shutdown)
            backoff = Backoff(cap=options.retry_max_seconds)
            batcher: Batcher | None = None
            while not shutdown.requested:
                try:
                    if batcher is None:
                        await ensure_stream(
                            js, name=settings.stream_name, duplicate_window_seconds=options.duplicate_window_seconds
                        )
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
                        batcher = Batcher(
                            subscription, size=options.audit_batch_size, flush_seconds=options.audit_flush_seconds
                        )
                    await audit.count_dead_letters()
                    batch = await batcher.collect()
                    if not batch:
                        if burst:
                            return
                        continue
                    if not await audit.handle(batch):
                        return  # stopping: the rest of the batch stays unacked and comes back to the next audit
                except NATS_TRANSIENT as exc:
                    # Unacked messages (a failed park included) come back after ack_wait.
                    delay = backoff.delay()
                    log.warning("JetStream call failed, retrying", extra={"error": repr(exc), "retry_in_s": delay})
                    await shutdown.sleep(delay)
                    continue
                backoff.reset()
    finally:
        await asyncio.to_thread(changelog.close)
