"""The outbox relay: one active process (PostgreSQL advisory lock) moves committed events to Kafka, in id order.

A batch is claimed in id order, produced by an idempotent producer keyed by order id, and deleted only after every
message of it was acknowledged by the broker (acks=all). Any failure re-sends the same batch, in the same order, with a
fresh producer: events are published at least once, and duplicates carry the same ``event_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from confluent_kafka import KafkaError, KafkaException, Producer

from orderly.loms import repository
from orderly.loms.settings import LomsOptions, LomsSettings
from orderly.platform.errors import DependencyUnavailableError
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import BatchTimer
from orderly.platform.pools import kafka_config, postgres_pool
from orderly.platform.probes import Probes, outbox_relay_probes, serve_probes
from orderly.platform.retry import Retry

log = logging.getLogger(__name__)

RELAY_LOCK_KEY = 0x6C6F6D7372  # "lomsr": the one-active-relay lock
# After a stop request the relay keeps flushing the batch in flight for this long (the process drain is 10 s).
STOP_FLUSH_SECONDS = 7.0
# How long the relay waits for the broker (metadata and a producer id) before its first claim.
CONNECT_SECONDS = 5.0
# librdkafka statistics, read only to learn when the idempotent producer got its producer id (see new_producer).
STATS_INTERVAL_MS = 50
BATCHES = BatchTimer("loms-relay")


class DeliveryFailedError(DependencyUnavailableError):
    """The broker did not acknowledge every message of a batch; the batch is sent again."""

    def __init__(self, reason: str) -> None:
        super().__init__("kafka", reason)


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    failed_batches: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_claim_at: float | None = None  # when the first non-empty claim was sent: draining time starts here
    last_delete_at: float | None = None
    broker_ok: bool = True  # False from a batch the broker did not acknowledge until the next one it did

    def acknowledged(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` was acknowledged ``seconds`` after it was handed to the producer."""
        BATCHES.observe(rows, seconds)
        self.published += rows
        self.batches += 1
        self.broker_ok = True

    @property
    def drain_seconds(self) -> float | None:
        if self.first_claim_at is None or self.last_delete_at is None:
            return None
        return self.last_delete_at - self.first_claim_at


def producer_config(settings: LomsSettings) -> dict[str, Any]:
    return dict(
        kafka_config(
            settings.kafka,
            **{
                "client.id": "loms-relay",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": settings.loms.message_timeout_ms,
                # Java's partitioner, so other clients agree where an order's events live.
                "partitioner": "murmur2_random",
                # Delivery reports (a Python call per message) only for failures: success is known without them,
                # because flush() returns only once no message is left queued or in flight.
                "delivery.report.only.error": True,
            },
        )
    )


@dataclass
class RelayProducer:
    """A relay producer and what its callbacks report; one per producer, so a discarded producer can never report
    into the batch of its successor."""

    producer: Producer
    errors: list[KafkaError]  # failed deliveries
    has_pid: threading.Event  # the idempotent producer got its producer id; before that it cannot send


def new_producer(settings: LomsSettings) -> RelayProducer:
    """A relay producer whose failed deliveries and producer id are reported to its ``RelayProducer``.

    librdkafka asks for the producer id when it is created, finds no broker connected yet and tries again only
    500 ms later, so a fresh producer usually cannot send for half a second. The statistics (every
    ``STATS_INTERVAL_MS``, served by ``poll``/``flush``) are the only public view of that state; ``reach_broker`` waits
    on it so the relay does not claim rows it cannot send yet."""
    errors: list[KafkaError] = []
    has_pid = threading.Event()

    def failed(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    def statistics(stats_json: str) -> None:
        if not has_pid.is_set() and json.loads(stats_json).get("eos", {}).get("idemp_state") == "Assigned":
            has_pid.set()

    config = {
        **producer_config(settings),
        "on_delivery": failed,
        "statistics.interval.ms": STATS_INTERVAL_MS,
        "stats_cb": statistics,
    }
    return RelayProducer(Producer(config), errors, has_pid)


class OutboxRow(Protocol):
    """A claimed outbox row as asyncpg returns it: (id, key, value[, below]), the Kafka key and value already as bytes
    (no per-row Python work); read by position, which is cheaper than by name."""

    def __getitem__(self, column: int) -> Any: ...


CLAIM_SQL = """
SELECT id, convert_to(order_id::text, 'UTF8') AS key, convert_to(payload::text, 'UTF8') AS value
  FROM outbox WHERE id > $2 ORDER BY id LIMIT $1
"""
# The read-ahead past batch N ($2 = N's last id), plus, in the same snapshot, how many rows up to N's last id are
# visible (one value, computed once, repeated on every row): more than N's own means a late-committing lower id.
CLAIM_AHEAD_SQL = """
SELECT id, convert_to(order_id::text, 'UTF8') AS key, convert_to(payload::text, 'UTF8') AS value,
       (SELECT count(*) FROM outbox WHERE id <= $2) AS below
  FROM outbox WHERE id > $2 ORDER BY id LIMIT $1
"""


async def claim_batch(conn: asyncpg.Connection, limit: int, *, after: int = 0) -> list[OutboxRow]:
    rows: list[OutboxRow] = await conn.fetch(CLAIM_SQL, limit, after)
    return rows


async def claim_ahead(conn: asyncpg.Connection, limit: int, batch: Sequence[OutboxRow]) -> list[OutboxRow]:
    """The rows after ``batch`` (not yet deleted), each carrying ``below`` (see ``late_rows_below``)."""
    rows: list[OutboxRow] = await conn.fetch(CLAIM_AHEAD_SQL, limit, batch[-1][0])
    return rows


async def delete_batch(conn: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
    await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r[0] for r in rows])


def late_rows_below(ahead: Sequence[OutboxRow], batch: Sequence[OutboxRow]) -> bool:
    """Whether, when ``ahead`` was read, a row with an id up to the batch's last one was visible besides the batch's
    own (not yet deleted) rows: a transaction that committed late with a lower id. Without a read-ahead there is
    nothing to decide: the next claim starts from the lowest id anyway."""
    return bool(ahead) and int(ahead[0][3]) > len(batch)


async def publish(
    producer: Producer, errors: list[KafkaError], topic: str, rows: Sequence[OutboxRow], *, shutdown: Shutdown
) -> None:
    """Produce the rows in order and wait for every acknowledgement; raise ``DeliveryFailedError`` on any error.

    ``errors`` is the producer's failed-delivery list (``new_producer``); batches never overlap, so it holds only this
    batch's failures once cleared here."""
    errors.clear()
    produce = producer.produce
    for row in rows:
        try:
            produce(topic, row[2], row[1])  # value, key: positional, the hot loop of the relay
        except BufferError:  # the local queue is full: let deliveries drain it
            while True:
                await asyncio.to_thread(producer.poll, 0.1)
                try:
                    produce(topic, row[2], row[1])
                    break
                except BufferError:
                    continue
    stop_seen: float | None = None
    while len(producer) > 0:
        await asyncio.to_thread(producer.flush, 0.5)
        if shutdown.requested:
            stop_seen = stop_seen or time.monotonic()
            if time.monotonic() - stop_seen > STOP_FLUSH_SECONDS:
                raise DeliveryFailedError(f"stopping with {len(producer)} messages unacknowledged")
    if errors:
        # Every delivery failure counts as transient: right after a broker restart librdkafka can report even an
        # existing topic as unknown for a moment, and the batch must then simply go again.
        raise DeliveryFailedError(f"{len(errors)} of {len(rows)} messages failed, first: {errors[0].str()}")


async def pump(  # noqa: PLR0915 - claim, send, ack and delete stay in one loop, in order
    conn: asyncpg.Connection,
    *,
    settings: LomsSettings,
    shutdown: Shutdown,
    stats: RelayStats,
    retry: Retry,
    burst: bool = False,
) -> None:
    """Move outbox rows to Kafka until stopped (or, with ``burst``, until the outbox is empty).

    Batches go out strictly one after another: the next batch is produced only after every message of the current
    one was acknowledged, so a failed batch can never be overtaken. The database work overlaps the wait for
    acknowledgements: while batch N is in flight, batch N-1 (acknowledged) is deleted and batch N+1 is read ahead
    (ids above N). The read-ahead is used only if, in the read-ahead's own snapshot, no row at or below N's last id
    is visible besides N's own: such a row is a transaction that committed late with a lower id, and it must go out
    before anything newer, so the relay then claims again from the lowest id. (A later event of the same order always
    has a higher id than the late row and is inserted after it committed, because the order's row lock serialises its
    transitions; so it can be in a read-ahead only if the late row was visible in that same snapshot, and then the
    count sees it. A late row that becomes visible only afterwards is seen by the next read-ahead's count, which
    covers every id up to the next batch's last one.)
    """
    options: LomsOptions = settings.loms
    topic = settings.events_topic()
    sender = new_producer(settings)
    await reach_broker(sender, topic, shutdown=shutdown)
    rows: Sequence[OutboxRow] = []
    acked: Sequence[OutboxRow] = []  # acknowledged, not yet deleted

    async def delete_acked() -> None:
        nonlocal acked
        if acked:
            await delete_batch(conn, acked)
            stats.last_delete_at = time.monotonic()
            acked = []

    try:
        while not shutdown.requested:
            if not rows:
                await delete_acked()  # before claiming from the lowest id, or they would be claimed again
                claimed_at = time.monotonic()
                rows = await claim_batch(conn, options.batch_size)
                if not rows:
                    if burst:
                        return
                    await _idle(sender, options.idle_poll_seconds, shutdown=shutdown)
                    continue
                if stats.first_claim_at is None:
                    # Draining starts when the first non-empty claim was sent, so its PostgreSQL time counts, as it
                    # does in the benchmark's raw claim-and-delete loop.
                    stats.first_claim_at = claimed_at
            sent_at = time.perf_counter()
            sending = asyncio.create_task(publish(sender.producer, sender.errors, topic, rows, shutdown=shutdown))
            try:
                await delete_acked()
                ahead = await claim_ahead(conn, options.batch_size, rows)
            except BaseException:
                await asyncio.wait({sending})  # the batch stays in the outbox; the next relay session re-sends it
                if not sending.cancelled():
                    sending.exception()
                raise
            await asyncio.wait({sending})
            try:
                sending.result()
            except DeliveryFailedError as exc:
                sender = _after_failure(sender.producer, rows, exc, settings=settings, stats=stats)
                rows = []  # claim again from the lowest id: the same batch, in the same order
                if await retry.wait(exc, dependency="kafka"):
                    return
                continue
            retry.ok()
            stats.acknowledged(len(rows), time.perf_counter() - sent_at)
            late = late_rows_below(ahead, rows)
            acked, rows = rows, ([] if late else ahead)
        await delete_acked()
    finally:
        await asyncio.to_thread(sender.producer.flush, 2.0)


async def reach_broker(sender: RelayProducer, topic: str, *, shutdown: Shutdown) -> None:
    """Reach the broker and get a producer id before the first claim (up to ``CONNECT_SECONDS``; if the broker stays
    unreachable the first batch simply waits and is retried), so rows are not claimed only to wait for a connection."""
    deadline = time.monotonic() + CONNECT_SECONDS
    for _ in range(int(CONNECT_SECONDS)):
        if shutdown.requested:
            return
        try:
            await asyncio.to_thread(sender.producer.list_topics, topic, 1.0)
        except KafkaException:
            continue
        break
    while not sender.has_pid.is_set() and not shutdown.requested and time.monotonic() < deadline:
        await asyncio.to_thread(sender.producer.poll, 0.05)  # serves the statistics callback
    if not sender.has_pid.is_set() and not shutdown.requested:
        log.warning("Kafka not reachable yet; claiming anyway")


async def _idle(sender: RelayProducer, seconds: float, *, shutdown: Shutdown) -> None:
    """Wait for new rows. The producer's queued statistics callbacks are served first, or they would pile up."""
    sender.producer.poll(0)
    await shutdown.sleep(seconds)


def _after_failure(
    producer: Producer, rows: Sequence[OutboxRow], exc: Exception, *, settings: LomsSettings, stats: RelayStats
) -> RelayProducer:
    """Log the failed batch and hand back a fresh producer: a new idempotence session, as the old one may hold a
    fatal error."""
    stats.failed_batches += 1
    stats.broker_ok = False
    # One line per failed batch at DEBUG only: the outage itself is logged once, when it starts and when it ends.
    log.debug(
        "batch not acknowledged; it will be sent again",
        extra={"first_id": rows[0][0], "rows": len(rows), "error": str(exc)},
    )
    producer.purge()
    return new_producer(settings)


def relay_probes(settings: LomsSettings, pool: asyncpg.Pool, stats: RelayStats) -> Probes:
    """The relay's probes: active while it holds the relay lock, standby while it waits; PostgreSQL and Kafka answer;
    the outbox backlog and its oldest row's age."""
    probes = outbox_relay_probes(
        service="loms-relay",
        instance=settings.probe.instance,
        outbox="loms",
        pool=pool,
        backlog=repository.outbox_backlog,
    )

    async def kafka() -> bool:
        return stats.broker_ok

    probes.check("kafka", kafka)
    return probes


async def run_relay(settings: LomsSettings, shutdown: Shutdown, *, burst: bool = False) -> RelayStats:
    """Composition root of the relay: its probes, then relay sessions until stopped."""
    stats = RelayStats()
    probe_db = settings.postgres.model_copy(update={"pool_min": 0, "pool_max": 1})
    async with postgres_pool(probe_db) as pool:
        probes = relay_probes(settings, pool, stats)
        async with serve_probes(settings.probe, probes):
            await _relay_sessions(settings, shutdown, stats=stats, probes=probes, burst=burst)
    return stats


async def _relay_sessions(
    settings: LomsSettings, shutdown: Shutdown, *, stats: RelayStats, probes: Probes, burst: bool
) -> None:
    """Wait to be the active relay, then pump; reconnect after a lost connection.

    While PostgreSQL or Kafka is away the relay waits (one log line when a server goes, one when it is back) and
    sends the same batch again from the lowest id once it can; a permanent fault (database or topic missing) stops
    it with one line naming the fix.
    """
    cap = max(settings.loms.retry_backoff_seconds, 5.0)
    retry = Retry(shutdown, first=min(0.1, settings.loms.retry_backoff_seconds), cap=cap, logger=log)
    while not shutdown.requested:
        try:
            conn = await asyncpg.connect(settings.postgres.dsn())
        except Exception as exc:
            if await retry.wait(exc, dependency="postgres"):
                break
            continue
        try:
            if not await _become_active(conn, settings=settings, shutdown=shutdown, probes=probes):
                return
            probes.set_role("active")
            retry.ok()
            log.info("relay active", extra={"topic": settings.events_topic()})
            await pump(conn, settings=settings, shutdown=shutdown, stats=stats, retry=retry, burst=burst)
            if burst:
                log.info("relay burst done", extra={"published": stats.published, "drain_s": stats.drain_seconds})
                return
        except Exception as exc:
            if await retry.wait(exc, dependency="postgres"):
                break
        finally:
            probes.set_role("starting")
            await _close(conn)
    log.info("relay stopped", extra={"published": stats.published, "batches": stats.batches})


async def _become_active(
    conn: asyncpg.Connection, *, settings: LomsSettings, shutdown: Shutdown, probes: Probes
) -> bool:
    """Hold the relay lock (session-level, so it goes away with a dead process's connection)."""
    waiting_logged = False
    while not shutdown.requested:
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
            return True
        probes.set_role("standby")
        if not waiting_logged:
            log.info("another relay is active; standing by")
            waiting_logged = True
        await shutdown.sleep(settings.loms.standby_poll_seconds)
    return False


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except (OSError, TimeoutError, asyncpg.InterfaceError):
        conn.terminate()
