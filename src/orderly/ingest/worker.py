"""The worker process: the queue's single active consumer, storing batches in delivery order, acking after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from prometheus_client import Counter, start_http_server

from orderly.ingest import deadletters, repository
from orderly.ingest.broker import BROKER_ERRORS, declare_queues
from orderly.ingest.domain import AcceptedRequest, MalformedMessageError, PoisonMessageError
from orderly.ingest.service import StoreFailedError, store_with_retry
from orderly.ingest.settings import IngestSettings
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)

STORED = Counter("ingest_requests_stored_total", "Requests inserted into PostgreSQL")
DUPLICATES = Counter("ingest_redeliveries_skipped_total", "Delivered requests already stored (or revoked)")
BATCHES = Counter("ingest_batches_total", "Batches committed")
POISON = Counter("ingest_poison_messages_total", "Messages that could not be stored", ["action"])
DB_WAITS = Counter("ingest_database_unavailable_total", "Transient PostgreSQL errors waited out")

BURST_IDLE_S = 0.5


class ChannelLostError(Exception):
    """The AMQP channel closed: unacked deliveries return to the queue; drop them and reconnect."""


class StoppingError(Exception):
    """Shutdown was requested while a batch was not yet committed; it stays unacked."""


class Writer:
    """A PostgreSQL connection that is reopened after transient errors."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.conn: asyncpg.Connection | None = None

    async def store(self) -> repository.RequestStore:
        if self.conn is None or self.conn.is_closed():
            self.conn = await repository.connect(self.settings.postgres)
        return repository.RequestStore(self.conn)

    async def discard(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None


class Session:
    """One AMQP channel's life: consume, batch, store, ack. Ends when the channel is lost or work is done."""

    def __init__(self, *, settings: IngestSettings, writer: Writer, shutdown: Shutdown) -> None:
        self.options = settings.ingest
        self.writer, self.shutdown = writer, shutdown
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.lost = asyncio.Event()
        self.backoff = 0.1
        self.confirming: AbstractChannel | None = None  # publishes dead letters; opened in run()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.inbox.put_nowait(message)

    def on_close(self, *_args: Any) -> None:
        self.lost.set()

    async def _first(self, queue: AbstractQueue) -> AbstractIncomingMessage | None:
        """The next delivery, or None when the channel is lost, a stop is requested, or (burst) the queue is empty."""
        with contextlib.suppress(asyncio.QueueEmpty):
            return self.inbox.get_nowait()
        while True:
            getter = asyncio.ensure_future(self.inbox.get())
            lost = asyncio.ensure_future(self.lost.wait())
            stop = asyncio.ensure_future(self.shutdown.wait())
            timeout = BURST_IDLE_S if self.options.burst else None
            done, _ = await asyncio.wait({getter, lost, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in (lost, stop):
                task.cancel()
            if getter in done:
                return getter.result()
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter
            if self.lost.is_set() or self.shutdown.requested:
                return None
            declared = await queue.declare()  # burst: stop once nothing is ready and nothing is in flight to us
            if not declared.message_count and self.inbox.empty():
                self.shutdown.request("burst: queue empty")
                return None

    async def next_batch(self, queue: AbstractQueue) -> list[AbstractIncomingMessage]:
        first = await self._first(queue)
        if first is None:
            return []
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.max_wait_ms / 1000
        while len(batch) < self.options.batch_size:
            try:
                batch.append(self.inbox.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.inbox.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def on_transient(self, exc: BaseException) -> bool:
        """Wait before retrying a transient database error; raises (nothing acked) on stop or a lost channel."""
        DB_WAITS.inc()
        log.warning("PostgreSQL unavailable, waiting", extra={"error": f"{type(exc).__name__}: {exc}"})
        await self.writer.discard()
        if self.lost.is_set():
            raise ChannelLostError from exc
        if await self.shutdown.sleep(self.backoff):
            raise StoppingError from exc
        self.backoff = min(self.backoff * 2, 2.0)
        return True

    async def store(self, batch: Sequence[tuple[AbstractIncomingMessage, AcceptedRequest]]) -> None:
        """Commit the batch, then ack every delivery up to its last tag with one multiple-ack."""
        if not batch:
            return
        inserted = await store_with_retry(
            batch=[request for _, request in batch],
            store=self.writer.store,
            on_transient=self.on_transient,
            transient=repository.TRANSIENT_ERRORS,
            max_attempts=self.options.max_attempts,
        )
        self.backoff = 0.1
        STORED.inc(inserted)
        DUPLICATES.inc(len(batch) - inserted)
        BATCHES.inc()
        try:
            await batch[-1][0].ack(multiple=True)
        except BROKER_ERRORS as exc:
            # Committed but not acked: the broker redelivers, the token's uniqueness skips the repeat.
            raise ChannelLostError from exc

    async def store_or_isolate(self, batch: Sequence[tuple[AbstractIncomingMessage, AcceptedRequest]]) -> None:
        try:
            await self.store(batch)
        except StoreFailedError as exc:
            if len(batch) == 1:
                await self.poison(batch[0][0], exc)
                return
            log.warning("batch keeps failing; storing its requests one by one", extra={"size": len(batch)})
            for item in batch:
                await self.store_or_isolate([item])

    async def poison(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        token = message.message_id or "?"
        if not self.options.skip_poison:
            POISON.labels("stopped").inc()
            log.error(
                "poison message stops the line (strict order); fix it or run the worker with --skip-poison",
                extra={"token": token, "delivery_tag": message.delivery_tag, "error": str(exc)},
            )
            raise PoisonMessageError(f"message {token} cannot be stored: {exc}") from exc
        assert self.confirming is not None
        try:
            # The copy (with its reason) first, confirmed; the ack after. A crash in between parks it twice.
            await deadletters.park(self.confirming, message=message, reason=str(exc), options=self.options)
            await message.ack()
        except BROKER_ERRORS as error:
            raise ChannelLostError from error
        POISON.labels("dead_lettered").inc()
        log.error(
            "poison message dead-lettered (--skip-poison)",
            extra={"token": token, "queue": self.options.dead_letter_queue, "error": str(exc)},
        )
        await self.count_dead_letters()

    async def count_dead_letters(self) -> None:
        """Set orderly_dead_letters{service="ingest"} to the dead-letter queue's depth."""
        if self.confirming is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                DEAD_LETTERS.labels("ingest").set(await deadletters.waiting(self.confirming, self.options))

    async def watch_dead_letters(self) -> None:
        """Refresh the dead-letter depth while the session lives (replays and other workers change it too)."""
        while not self.lost.is_set():
            await self.count_dead_letters()
            if await self.shutdown.sleep(self.options.dead_letters_refresh_s):
                return

    async def process(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Store the decodable run before a malformed message, deal with that one, continue with the rest."""
        run: list[tuple[AbstractIncomingMessage, AcceptedRequest]] = []
        for message in messages:
            try:
                run.append((message, AcceptedRequest.from_message(message.body)))
            except MalformedMessageError as exc:
                await self.store_or_isolate(run)
                run = []
                await self.poison(message, exc)
        await self.store_or_isolate(run)

    async def run(self, connection: aio_pika.abc.AbstractConnection) -> None:
        connection.close_callbacks.add(self.on_close)
        channel = await connection.channel(publisher_confirms=False)
        channel.close_callbacks.add(self.on_close)
        # Prefetch two batches so the next one is already here while this one commits.
        await channel.set_qos(prefetch_count=min(2 * self.options.batch_size, 65535))
        queue = await declare_queues(channel, self.options)
        self.confirming = await connection.channel(publisher_confirms=True)
        self.confirming.close_callbacks.add(self.on_close)
        await queue.consume(self.on_message, no_ack=False)
        log.info("consuming (single active consumer; a second worker waits as standby)", extra={"queue": queue.name})
        watcher = asyncio.create_task(self.watch_dead_letters())
        try:
            while not self.shutdown.requested and not self.lost.is_set():
                batch = await self.next_batch(queue)
                if not batch:
                    continue
                if batch[0].channel.is_closed:
                    raise ChannelLostError
                await self.process(batch)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def run_worker(settings: IngestSettings, shutdown: Shutdown) -> None:
    """Composition root of the worker: a PostgreSQL writer and AMQP sessions, reconnecting until stopped."""
    if settings.ingest.metrics_port:
        start_http_server(settings.ingest.metrics_port, addr=settings.http.host)
    writer = Writer(settings)
    backoff = 0.1
    try:
        while not shutdown.requested:
            session = Session(settings=settings, writer=writer, shutdown=shutdown)
            try:
                connection = await aio_pika.connect(settings.rabbitmq.url())
            except BROKER_ERRORS as exc:
                log.warning("RabbitMQ unavailable, retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                if await shutdown.sleep(backoff):
                    break
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            try:
                async with connection:
                    await session.run(connection)
            except (ChannelLostError, *BROKER_ERRORS) as exc:  # type: ignore[misc]
                log.warning("AMQP channel lost; unacked deliveries return to the queue", extra={"error": repr(exc)})
            except StoppingError:
                log.info("stopping with an uncommitted batch left unacked")
    finally:
        await writer.discard()
