"""The notifier consumer: one line per event on stdout, offsets stored only after the line was written.

Offsets live in Kafka (consumer group). ``enable.auto.offset.store`` is off: an offset is stored after its event was
printed (or parked in the DLQ) and the background auto-commit sends stored offsets; revocation and shutdown commit
synchronously before the member leaves the group. A crash loses nothing: unstored events are delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from orderly.notifier.deadletters import REPLAY_OF, DeadLetterCounter, header_pairs
from orderly.notifier.events import BadEventError, parse_event, render_line
from orderly.notifier.settings import NotifierSettings
from orderly.platform.lifecycle import Shutdown
from orderly.platform.metrics import DEAD_LETTERS
from orderly.platform.pools import kafka_config

log = logging.getLogger(__name__)


class ParkingFailedError(Exception):
    """The DLQ did not acknowledge a message; its offset must not be stored."""


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

    def __init__(self, settings: NotifierSettings, *, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.options = settings.notifier
        self.out = out
        self.printed = 0
        self.dead_letters_changed = asyncio.Event()

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info(
            "partitions assigned",
            extra={"instance": self.options.instance, "partitions": sorted(p.partition for p in partitions)},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # What this member finished must be committed before another member starts on its partitions.
        _commit_now(consumer, "revoke")
        log.info(
            "partitions revoked",
            extra={"instance": self.options.instance, "partitions": sorted(p.partition for p in partitions)},
        )

    async def run(self, shutdown: Shutdown) -> None:
        consumer = Consumer(consumer_config(self.settings))
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
                if message.error() is not None:
                    log.warning("consumer error", extra={"error": str(message.error())})
                    continue
                if await self._handle(message, dlq, shutdown):
                    consumer.store_offsets(message=message)
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

    def _leave(self, consumer: Consumer, dlq: Producer) -> None:
        dlq.flush(5)
        _commit_now(consumer, "shutdown")
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
        while True:
            try:
                await self._park(message, dlq, error=f"failed {self.options.max_attempts} times: {last_error}")
            except ParkingFailedError as exc:
                log.error("could not park the event in the DLQ", extra={**where, "error": str(exc)})  # noqa: TRY400
                if await shutdown.sleep(self.options.backoff_max_seconds):
                    return False
            else:
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

    async def _park(self, message: Message, dlq: Producer, *, error: str) -> None:
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
        remaining = await asyncio.to_thread(dlq.flush, 10)
        if remaining or errors:
            raise ParkingFailedError(str(errors[0]) if errors else "DLQ flush timed out")
        self.dead_letters_changed.set()
        log.warning(
            "event parked in the DLQ",
            extra={"partition": message.partition(), "offset": message.offset(), "dlq": self.settings.dlq_topic()},
        )


async def run_notifier(settings: NotifierSettings, shutdown: Shutdown) -> None:
    """Composition root of the notifier process."""
    with contextlib.suppress(asyncio.CancelledError):
        await Notifier(settings).run(shutdown)
