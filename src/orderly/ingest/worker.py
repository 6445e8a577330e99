"""The worker process: the queue's single active consumer, storing batches in delivery order, acking after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from prometheus_client import Counter

from orderly.ingest import repository
from orderly.ingest.broker import BROKER_ERRORS, DeadLetters, declare_queues
from orderly.ingest.domain import AcceptedRequest, MalformedMessageError, PoisonMessageError, RejectedFrameError
from orderly.ingest.monitor import QueueMonitor
from orderly.ingest.service import StoreFailedError, store_with_retry
from orderly.ingest.settings import IngestSettings
from orderly.platform.errors import DependencyUnavailableError
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import DEAD_LETTERS, QUEUE_DEPTH, BatchTimer
from orderly.platform.pools import postgres_pool
from orderly.platform.probes import Probes, serve_probes
from orderly.platform.retry import Retry, StoppedError

log = logging.getLogger(__name__)

STORED = Counter("ingest_requests_stored_total", "Requests inserted into PostgreSQL")
DUPLICATES = Counter("ingest_redeliveries_skipped_total", "Delivered requests already stored (or revoked)")
BATCHES = Counter("ingest_batches_total", "Batches committed")
POISON = Counter("ingest_poison_messages_total", "Messages that could not be stored", ["action"])
REJECTED_FRAMES = Counter("ingest_stomp_rejected_total", "STOMP requests dead-lettered for breaking the contract")
DB_WAITS = Counter("ingest_database_unavailable_total", "Transient PostgreSQL errors waited out")

BURST_IDLE_S = 0.5
ROLE_REFRESH_S = 5.0  # RabbitMQ's management API refreshes its queue figures every 5 s
BATCHES_TIMED = BatchTimer("ingest-worker")


class ChannelLostError(DependencyUnavailableError):
    """The AMQP channel closed: unacked deliveries return to the queue; drop them and reconnect."""

    def __init__(self) -> None:
        super().__init__("rabbitmq", "the AMQP channel closed")


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

    def __init__(self, *, settings: IngestSettings, writer: Writer, shutdown: Shutdown, database: Retry) -> None:
        self.options = settings.ingest
        self.writer, self.shutdown, self.database = writer, shutdown, database
        # Prefetch two batches so the next one is already here while this one commits; the broker never has more
        # unacked deliveries out to this channel than the prefetch, so an inbox of that size never fills up.
        self.prefetch = min(2 * self.options.batch_size, 65535)
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue(maxsize=self.prefetch)
        self.lost = asyncio.Event()
        self.dead_letters: DeadLetters | None = None  # set in run(), on a channel with publisher confirms
        self.consumer_tag: str | None = None  # set once consuming; the probes compare it with the active one

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await self.inbox.put(message)  # bounded: would wait (never drop) if the broker ever sent past the prefetch

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
        await self.writer.discard()
        if self.lost.is_set():
            raise ChannelLostError from exc
        if await self.database.wait(exc, dependency="postgres"):
            raise StoppingError from exc
        return True

    async def store(self, batch: Sequence[tuple[AbstractIncomingMessage, AcceptedRequest]]) -> None:
        """Commit the batch, then ack every delivery up to its last tag with one multiple-ack."""
        if not batch:
            return
        with BATCHES_TIMED.batch(len(batch)):
            stored = await store_with_retry(
                batch=[request for _, request in batch],
                store=self.writer.store,
                on_transient=self.on_transient,
                max_attempts=self.options.max_attempts,
            )
        self.database.ok()
        STORED.inc(stored.inserted)
        DUPLICATES.inc(len(batch) - stored.inserted)
        BATCHES.inc()
        for index in stored.skipped:
            message = batch[index][0]
            # A redelivery of a stored request is skipped silently; a client that SENT a token again is told why.
            if self.from_stomp(message) and not message.redelivered:
                await self.reject_frame(
                    message, f"duplicate token {batch[index][1].token}: stored once already", ack=False
                )
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
        assert self.dead_letters is not None, "run() opens the dead-letter channel before consuming"
        try:
            # The copy with its reason first, confirmed; the ack after. A crash in between parks it twice (same token).
            await self.dead_letters.park(message, str(exc))
            await message.ack()
        except BROKER_ERRORS as error:
            raise ChannelLostError from error
        POISON.labels("dead_lettered").inc()
        log.error(
            "poison message dead-lettered (--skip-poison)",
            extra={"token": token, "queue": self.options.dead_letter_queue, "error": str(exc)},
        )

    def from_stomp(self, message: AbstractIncomingMessage) -> bool:
        return message.exchange == self.options.stomp_exchange

    def decode(self, message: AbstractIncomingMessage) -> AcceptedRequest:
        """The request in a delivery: written by our API (JSON object) or SENT by a client over STOMP."""
        if self.from_stomp(message):
            return AcceptedRequest.from_stomp(
                message.body,
                token=(message.headers or {}).get("token"),
                received_at=datetime.now(UTC),
                max_numbers=self.options.max_numbers,
                max_body_bytes=self.options.stomp_max_body_bytes,
            )
        return AcceptedRequest.from_message(message.body)

    async def reject_frame(self, message: AbstractIncomingMessage, reason: str, *, ack: bool = True) -> None:
        """A client's bad request: parked in the dead-letter queue with its reason; the line goes on.

        ``ack=False`` when the caller's multiple-ack covers the delivery (a duplicate inside a stored batch).
        """
        assert self.dead_letters is not None, "run() opens the dead-letter channel before consuming"
        REJECTED_FRAMES.inc()
        log.warning(
            "STOMP request dead-lettered",
            extra={
                "reason": reason,
                "queue": self.options.dead_letter_queue,
                "token": (message.headers or {}).get("token"),
            },
        )
        try:
            await self.dead_letters.park(message, reason)
            if ack:
                await message.ack()
        except BROKER_ERRORS as exc:
            raise ChannelLostError from exc

    async def process(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Store the decodable run before a malformed message, deal with that one, continue with the rest."""
        run: list[tuple[AbstractIncomingMessage, AcceptedRequest]] = []
        for message in messages:
            try:
                run.append((message, self.decode(message)))
            except RejectedFrameError as exc:
                await self.store_or_isolate(run)
                run = []
                await self.reject_frame(message, exc.reason)
            except MalformedMessageError as exc:
                await self.store_or_isolate(run)
                run = []
                await self.poison(message, exc)
        await self.store_or_isolate(run)

    async def run(self, connection: aio_pika.abc.AbstractConnection) -> None:
        connection.close_callbacks.add(self.on_close)
        channel = await connection.channel(publisher_confirms=False)
        channel.close_callbacks.add(self.on_close)
        await channel.set_qos(prefetch_count=self.prefetch)
        confirmed = await connection.channel(publisher_confirms=True)
        confirmed.close_callbacks.add(self.on_close)
        self.dead_letters = DeadLetters(confirmed, queue=self.options.dead_letter_queue, source=self.options.queue)
        queue = await declare_queues(channel, self.options)
        self.consumer_tag = await queue.consume(self.on_message, no_ack=False)
        log.info("consuming (single active consumer; a second worker waits as standby)", extra={"queue": queue.name})
        while not self.shutdown.requested and not self.lost.is_set():
            batch = await self.next_batch(queue)
            if not batch:
                continue
            if batch[0].channel.is_closed:
                raise ChannelLostError
            await self.process(batch)


def worker_probes(
    settings: IngestSettings, *, monitor: QueueMonitor, pool: asyncpg.Pool, current: Callable[[], Session | None]
) -> Probes:
    """The worker's probes: active or standby (the queue's single active consumer), queue and dead-letter depth."""
    probes = Probes(service="ingest-worker", instance=settings.probe.instance)
    depth, dead = QUEUE_DEPTH.labels("ingest"), DEAD_LETTERS.labels("ingest")

    async def postgres() -> bool:
        return bool(await pool.fetchval("SELECT 1"))

    async def rabbitmq() -> bool:
        session = current()
        return session is not None and session.consumer_tag is not None and not session.lost.is_set()

    async def queue() -> None:
        ready, active_tag = await monitor.depth()
        depth.set(ready)
        session = current()
        if active_tag is not None and session is not None and session.consumer_tag is not None:
            probes.set_role("active" if active_tag == session.consumer_tag else "standby")

    async def dead_letters() -> None:
        dead.set(await monitor.dead_letters())

    probes.check("postgres", postgres)
    probes.check("rabbitmq", rabbitmq)
    probes.every(ROLE_REFRESH_S, "queue", queue)  # the role shows in /healthz, so it does not wait for a scrape
    probes.on_scrape("dead_letters", dead_letters)
    return probes


class Worker:
    """AMQP sessions one after another until stopped; ``session`` is the current one (read by the probes)."""

    def __init__(self, settings: IngestSettings, shutdown: Shutdown) -> None:
        self.settings, self.shutdown = settings, shutdown
        self.session: Session | None = None

    async def run(self) -> None:
        settings, shutdown = self.settings, self.shutdown
        writer = Writer(settings)
        database = Retry(shutdown, dependency="postgres", cap=2.0, logger=log)
        broker = Retry(shutdown, dependency="rabbitmq", cap=2.0, logger=log)
        try:
            # PostgreSQL first: a permanent fault (database missing) stops the worker at once with one line naming the
            # fix, and no delivery is taken before the writer can store it.
            await database.call(writer.store, dependency="postgres")
            while not shutdown.requested:
                session = self.session = Session(settings=settings, writer=writer, shutdown=shutdown, database=database)
                try:
                    connection = await aio_pika.connect(settings.rabbitmq.url())
                except Exception as exc:
                    if await broker.wait(exc, dependency="rabbitmq"):
                        break
                    continue
                broker.ok()
                try:
                    async with connection:
                        await session.run(connection)
                except StoppingError:
                    log.info("stopping with an uncommitted batch left unacked")
                except (ChannelLostError, *BROKER_ERRORS) as exc:  # type: ignore[misc]
                    # Unacked deliveries return to the queue; the next session takes them again, in order.
                    if await broker.wait(exc, dependency="rabbitmq"):
                        break
        except StoppedError:
            pass
        finally:
            await writer.discard()


async def run_worker(settings: IngestSettings, shutdown: Shutdown) -> None:
    """Composition root of the worker: its probes, a PostgreSQL writer and AMQP sessions, reconnecting until stopped."""
    worker = Worker(settings, shutdown)
    monitor = QueueMonitor(settings.rabbitmq, settings.ingest)
    probe_db = settings.postgres.model_copy(update={"pool_min": 0, "pool_max": 1})
    try:
        async with postgres_pool(probe_db) as probe_pool:
            probes = worker_probes(settings, monitor=monitor, pool=probe_pool, current=lambda: worker.session)
            async with serve_probes(settings.probe, probes):
                await worker.run()
    finally:
        await monitor.aclose()
