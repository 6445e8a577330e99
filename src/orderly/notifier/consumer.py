"""The notifier consumer: one line per event on stdout, offsets stored only after the line was written.

Offsets live in Kafka (consumer group). ``enable.auto.offset.store`` is off: an offset is stored after its event was
printed (or parked in the DLQ) and the background auto-commit sends stored offsets; revocation and shutdown commit
synchronously before the member leaves the group. A crash loses nothing: unstored events are delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from orderly.notifier.deadletters import REPLAY_OF, DeadLetterCounter, header_pairs
from orderly.notifier.events import BadEventError, parse_event, render_line
from orderly.notifier.settings import PARK_FLUSH_SECONDS, NotifierSettings
from orderly.platform.errors import DependencyUnavailableError, Permanent, Poison, Transient, classify_kafka_error
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import CONSUMER_LAG, DEAD_LETTERS
from orderly.platform.pools import kafka_config
from orderly.platform.probes import Probes, serve_probes
from orderly.platform.retry import Retry

log = logging.getLogger(__name__)


METADATA_TIMEOUT_S = 1.0
# librdkafka's statistics (served by poll) say whether a broker connection is up: the readiness check reads them
# instead of asking the broker, which under load can take longer than a probe may wait.
STATS_INTERVAL_MS = 2000


class ParkingFailedError(DependencyUnavailableError):
    """The DLQ did not acknowledge a message; its offset must not be stored."""

    def __init__(self, reason: str) -> None:
        super().__init__("kafka", reason)


def consumer_config(settings: NotifierSettings) -> dict[str, Any]:
    options = settings.notifier
    return dict(
        kafka_config(
            settings.kafka,
            **{
                "client.id": options.instance,
                "group.id": settings.group_id(),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": options.commit_interval_ms,
                "session.timeout.ms": 10_000,
                # The time one message may take is bounded below this (NotifierOptions checks it).
                "max.poll.interval.ms": options.max_poll_interval_ms,
                "heartbeat.interval.ms": 1000,
            },
        )
    )


def _commit_now(consumer: Consumer, why: str) -> None:
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            log.warning("offset commit failed", extra={"when": why, "error": str(exc)})


class Notifier:
    """One member of the notifier group; ``run`` is its whole life, from subscribe to leaving the group."""

    def __init__(self, settings: NotifierSettings, *, out: TextIO = sys.stdout, probes: Probes | None = None) -> None:
        self.settings = settings
        self.options = settings.notifier
        self.out = out
        self.printed = 0
        self.dead_letters_changed = asyncio.Event()
        self.probes = probes
        self.consumer: Consumer | None = None
        # Held while the probes read through the consumer in a thread and while it closes: never both at once.
        self.consumer_lock = threading.Lock()
        self.broker_up = False  # from the latest statistics: some broker connection is up
        # Kafka's clients reconnect on their own; this only keeps the log to one line when the broker goes and one
        # when it is back, and paces the DLQ retries (its own waits use the run's shutdown, never this Retry's).
        self.kafka = Retry(Shutdown(), dependency="kafka", first=self.options.backoff_seconds, logger=log)

    def _on_stats(self, stats_json: str) -> None:
        brokers = json.loads(stats_json).get("brokers", {}).values()
        self.broker_up = any(b.get("nodeid", -1) >= 0 and b.get("state") == "UP" for b in brokers)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.probes is not None:
            self.probes.set_role("active" if partitions else "standby")
        log.info(
            "partitions assigned",
            extra={"instance": self.options.instance, "partitions": sorted(p.partition for p in partitions)},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # What this member finished must be committed before another member starts on its partitions.
        _commit_now(consumer, "revoke")
        if self.probes is not None:
            self.probes.set_role("standby")
        log.info(
            "partitions revoked",
            extra={"instance": self.options.instance, "partitions": sorted(p.partition for p in partitions)},
        )

    async def run(self, shutdown: Shutdown) -> None:
        config = {
            **consumer_config(self.settings),
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": self._on_stats,
            "error_cb": self._consumer_error,  # a lost broker is reported here (served by poll), not as a message
        }
        consumer = self.consumer = Consumer(config)
        dlq = Producer(
            dict(kafka_config(self.settings.kafka, **{"enable.idempotence": True, "acks": "all", "linger.ms": 0}))
        )
        counting = asyncio.create_task(self._count_dead_letters(shutdown))
        try:
            consumer.subscribe([self.settings.events_topic()], on_assign=self._on_assign, on_revoke=self._on_revoke)
            log.info("notifier started", extra={"instance": self.options.instance, "group": self.settings.group_id()})
            while not shutdown.requested:
                message = await asyncio.to_thread(consumer.poll, self.options.poll_seconds)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    self._consumer_error(error)
                    continue
                self.kafka.ok()
                if await self._handle(message, dlq, shutdown):
                    consumer.store_offsets(message=message)
                elif not shutdown.requested:
                    self._read_again(consumer, message)
        finally:
            counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await counting
            await asyncio.to_thread(self._leave, consumer, dlq)

    async def _count_dead_letters(self, shutdown: Shutdown) -> None:
        """Keep orderly_dead_letters{service="notifier"} at the DLQ's waiting dead letters (all members agree)."""
        counter = DeadLetterCounter(self.settings)
        failing = False
        try:
            while not shutdown.requested:
                try:
                    DEAD_LETTERS.labels("notifier").set(await asyncio.to_thread(counter.count))
                    failing = False
                except (KafkaException, TimeoutError) as exc:
                    if not failing:
                        log.warning("could not count the DLQ's dead letters", extra={"error": str(exc)})
                    failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.dead_letters_changed.wait(), timeout=self.options.dead_letters_refresh_seconds
                    )
                self.dead_letters_changed.clear()
        finally:
            await asyncio.to_thread(counter.close)

    @staticmethod
    def _read_again(consumer: Consumer, message: Message) -> None:
        """Rewind the partition to an unfinished message: it comes again after the member polled (and stays alive)."""
        try:
            consumer.seek(TopicPartition(str(message.topic()), message.partition() or 0, message.offset() or 0))
        except KafkaException as exc:  # the partition was revoked meanwhile: its next owner starts at the commit
            log.warning("could not rewind to an unfinished message", extra={"error": str(exc)})

    def _consumer_error(self, error: KafkaError) -> None:
        fault = classify_kafka_error(error)
        if isinstance(fault, Poison):
            log.warning("consumer error", extra={"error": fault.reason})
            return
        # Transient, or a topic not there yet (init may still be creating it): wait, logging it once.
        self.kafka.failed(Transient(fault.dependency, fault.message if isinstance(fault, Permanent) else fault.reason))

    def _leave(self, consumer: Consumer, dlq: Producer) -> None:
        dlq.flush(5)
        _commit_now(consumer, "shutdown")
        with self.consumer_lock:
            self.consumer = None
            consumer.close()  # leaves the group at once, so a standby member takes over without a session timeout
        log.info("notifier stopped", extra={"instance": self.options.instance, "printed": self.printed})

    async def _handle(self, message: Message, dlq: Producer, shutdown: Shutdown) -> bool:
        """Process one message; True when its offset may be stored (printed, or parked in the DLQ)."""
        where = {"partition": message.partition(), "offset": message.offset(), "instance": self.options.instance}
        delay = self.options.backoff_seconds
        last_error = ""
        for attempt in range(1, self.options.max_attempts + 1):
            try:
                self._process(message)
            except (BadEventError, OSError) as exc:
                last_error = str(exc)
                # The cause is in the message; a traceback would only repeat it.
                log.error("event processing failed", extra={**where, "attempt": attempt, "error": str(exc)})  # noqa: TRY400
            else:
                return True
            if attempt < self.options.max_attempts:
                if await shutdown.sleep(delay):
                    return False  # not processed: the member that gets the partition next sees it again
                delay = min(delay * 2, self.options.backoff_max_seconds)
        # Parking is bounded too: past park_timeout_seconds the member goes back to polling and reads the message
        # again from its offset, instead of blocking the poll loop into an eviction (max.poll.interval.ms).
        give_up_at = time.monotonic() + self.options.park_timeout_seconds
        while True:
            remaining = give_up_at - time.monotonic()
            try:
                await self._park(
                    message,
                    dlq,
                    error=f"failed {self.options.max_attempts} times: {last_error}",
                    flush_s=min(PARK_FLUSH_SECONDS, max(remaining, 0.1)),
                )
            except ParkingFailedError as exc:
                remaining = give_up_at - time.monotonic()
                if remaining <= 0:
                    log.error("parking timed out; the event will be read again", extra=where)  # noqa: TRY400
                    return False
                self.kafka.failed(Transient("kafka", str(exc)))  # one line when the DLQ's broker goes
                if await shutdown.sleep(min(self.kafka.next_delay(), remaining)):
                    return False
            else:
                self.kafka.ok()
                return True

    def _process(self, message: Message) -> None:
        event = parse_event(message.value())
        line = render_line(
            event,
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            instance=self.options.instance,
            replayed=any(key == REPLAY_OF for key, _ in header_pairs(message)),
        )
        self.out.write(line + "\n")
        self.out.flush()
        self.printed += 1

    async def _park(self, message: Message, dlq: Producer, *, error: str, flush_s: float = PARK_FLUSH_SECONDS) -> None:
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        dlq.produce(
            self.settings.dlq_topic(),
            key=message.key(),
            value=message.value(),
            headers=[
                ("error", error.encode()),
                ("source.topic", str(message.topic()).encode()),
                ("source.partition", str(message.partition()).encode()),
                ("source.offset", str(message.offset()).encode()),
                ("instance", self.options.instance.encode()),
            ],
            on_delivery=delivered,
        )
        remaining = await asyncio.to_thread(dlq.flush, flush_s)
        if remaining or errors:
            raise ParkingFailedError(str(errors[0]) if errors else "DLQ flush timed out")
        self.dead_letters_changed.set()
        log.warning(
            "event parked in the DLQ",
            extra={"partition": message.partition(), "offset": message.offset(), "dlq": self.settings.dlq_topic()},
        )


def group_lag(consumer: Consumer, topic: str) -> dict[int, int]:
    """The group's lag per partition of ``topic``: end offset minus committed offset (from the start when none)."""
    metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics[topic]
    partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    lag = {}
    for tp in consumer.committed(partitions, timeout=METADATA_TIMEOUT_S):
        low, high = consumer.get_watermark_offsets(tp, timeout=METADATA_TIMEOUT_S, cached=False)
        lag[tp.partition] = max(high - (tp.offset if tp.offset >= 0 else low), 0)
    return lag


def notifier_probes(settings: NotifierSettings) -> tuple[Probes, Notifier]:
    """A notifier and its probes: active with partitions assigned, standby without; Kafka answers; the group's lag
    per partition. The DLQ's waiting dead letters are counted by the notifier itself (``_count_dead_letters``)."""
    probes = Probes(service="notifier", instance=settings.notifier.instance)
    notifier = Notifier(settings, probes=probes)
    DEAD_LETTERS.labels("notifier")  # the family is served from the first scrape; the notifier keeps it current

    def read(what: Any, topic: str) -> Any:
        with notifier.consumer_lock:
            if notifier.consumer is None:
                raise KafkaException(KafkaError(KafkaError._STATE, "the consumer is not running"))
            return what(notifier.consumer, topic)

    async def kafka() -> bool:
        return notifier.broker_up

    async def lag() -> None:
        for partition, behind in (await asyncio.to_thread(read, group_lag, settings.events_topic())).items():
            CONSUMER_LAG.labels("notifier", str(partition)).set(behind)

    probes.check("kafka", kafka)
    probes.on_scrape("consumer_lag", lag)
    return probes, notifier


async def run_notifier(settings: NotifierSettings, shutdown: Shutdown) -> None:
    """Composition root of the notifier process: its probes, then the consumer."""
    probes, notifier = notifier_probes(settings)
    async with serve_probes(settings.probe, probes):
        with contextlib.suppress(asyncio.CancelledError):
            await notifier.run(shutdown)
