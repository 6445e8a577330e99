"""Dead letters of the notifier: events parked in ``loms.order-events.dlq`` (after ``kafka.topic_prefix``), and replay.

A Kafka topic is a log: nothing can be taken out of its middle. So a replay appends a *marker* to the DLQ — an empty
message whose header ``orderly.replayed`` names the dead letter (``<partition>:<offset>``) — after the re-sent event
was acknowledged by every in-sync replica. A dead letter is waiting while no marker names it. The re-sent event
carries the header ``orderly.replay-of``, and the notifier prints ``"replayed": true`` on its line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from orderly.notifier.events import BadEventError, parse_event
from orderly.notifier.settings import NotifierSettings
from orderly.platform.deadletters import DeadLetter, DeadLetterNotFoundError, Replayed, ReplayRefusedError
from orderly.platform.pools import kafka_config

log = logging.getLogger(__name__)

REPLAY_OF = "orderly.replay-of"  # on a re-sent event: the dead letter it came from, "<dlq topic>:<partition>:<offset>"
REPLAYED = "orderly.replayed"  # on a marker in the DLQ: the dead letter that was replayed, "<partition>:<offset>"
READ_TIMEOUT_S = 30.0


def header_pairs(message: Message) -> list[tuple[str, bytes]]:
    """A message's headers as (name, value) pairs, whatever shape the client handed them over in."""
    raw: Any = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs]


def _headers(message: Message) -> dict[str, str]:
    return {key: value.decode(errors="replace") for key, value in header_pairs(message)}


@dataclass(frozen=True, slots=True)
class DlqContents:
    parked: list[Message]
    replayed: set[str]

    def waiting(self) -> list[Message]:
        return [m for m in self.parked if f"{m.partition()}:{m.offset()}" not in self.replayed]


class DlqReader:
    """Reads the whole DLQ topic from its first retained offset to its end, without a consumer group's offsets."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.topic = settings.dlq_topic()
        self.consumer = Consumer(
            dict(
                kafka_config(
                    settings.kafka,
                    **{
                        "group.id": f"{settings.group_id()}-dlq-reader-{uuid.uuid4().hex[:8]}",
                        "enable.auto.commit": False,
                        "enable.auto.offset.store": False,
                    },
                )
            )
        )

    def ends(self) -> dict[int, tuple[int, int]]:
        """Low and high watermark per partition (empty when the topic does not exist)."""
        topic = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if topic is None or topic.error is not None:
            return {}
        return {
            p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in topic.partitions
        }

    def read(self) -> DlqContents:
        ends = {p: (low, high) for p, (low, high) in self.ends().items() if high > low}
        parked: list[Message] = []
        replayed: set[str] = set()
        if not ends:
            return DlqContents(parked, replayed)
        self.consumer.assign([TopicPartition(self.topic, p, low) for p, (low, _) in ends.items()])
        remaining = set(ends)
        deadline = time.monotonic() + READ_TIMEOUT_S
        try:
            while remaining:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {self.topic} to its end within {READ_TIMEOUT_S} s")
                for message in self.consumer.consume(500, 0.5):
                    if message.error() is not None:
                        continue
                    headers = _headers(message)
                    if REPLAYED in headers:
                        replayed.add(headers[REPLAYED])
                    else:
                        parked.append(message)
                    if (message.offset() or 0) >= ends[message.partition() or 0][1] - 1:
                        remaining.discard(message.partition() or 0)
        finally:
            self.consumer.unassign()
        return DlqContents(parked, replayed)

    def close(self) -> None:
        self.consumer.close()


class DeadLetterCounter:
    """The notifier's figure for orderly_dead_letters: dead letters without a replay marker, re-read on change only."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.reader = DlqReader(settings)
        self._seen: dict[int, tuple[int, int]] | None = None
        self._count = 0
        # A count cut short by a stop goes on in its thread: close waits for it rather than close the consumer under it.
        self._lock = threading.Lock()

    def count(self) -> int:
        with self._lock:
            ends = self.reader.ends()
            if ends != self._seen:
                self._count = len(self.reader.read().waiting())
                self._seen = ends
            return self._count

    def close(self) -> None:
        with self._lock:
            self.reader.close()


def _letter(message: Message) -> DeadLetter:
    headers = _headers(message)
    _kind, stamp = message.timestamp()
    details = {"key": (message.key() or b"").decode(errors="replace")}
    if "instance" in headers:
        details["parked_by"] = headers["instance"]
    return DeadLetter(
        id=f"{message.partition()}:{message.offset()}",
        payload=message.value() or b"",
        reason=headers.get("error", "?"),
        source=headers.get("source.topic", "?"),
        position=f"partition {headers.get('source.partition', '?')}, offset {headers.get('source.offset', '?')}",
        parked_at=datetime.fromtimestamp(stamp / 1000, UTC) if stamp > 0 else None,
        details=details,
    )


class NotifierDeadLetters:
    """`orderly dlq … notifier`: ids are the dead letters' ``<partition>:<offset>`` in the DLQ topic."""

    pipeline = "notifier"

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self._reader: DlqReader | None = None
        self._producer: Producer | None = None

    async def __aenter__(self) -> Self:
        self._reader = DlqReader(self.settings)
        # The relay's partitioner: the re-sent event lands in the partition its order's other events are in.
        self._producer = Producer(
            dict(
                kafka_config(
                    self.settings.kafka,
                    **{"enable.idempotence": True, "acks": "all", "linger.ms": 0, "partitioner": "murmur2_random"},
                )
            )
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.close)

    async def _contents(self) -> DlqContents:
        assert self._reader is not None, "use the store in `async with`"
        return await asyncio.to_thread(self._reader.read)

    async def list(self) -> list[DeadLetter]:
        return [_letter(m) for m in (await self._contents()).waiting()]

    async def replay(self, letter_id: str) -> Replayed:
        """Re-send the event to its topic (acked by all in-sync replicas), then append the replay marker.

        A second replay of the same dead letter finds the marker and sends nothing. A crash between the re-send and
        the marker leaves the dead letter waiting; replaying it then prints the event twice — the notifier's
        at-least-once, both lines with the same event_id.
        """
        contents = await self._contents()
        if letter_id in contents.replayed:
            return Replayed(id=letter_id, target=self.settings.events_topic(), sent=False, note="replayed before")
        matches = [m for m in contents.parked if f"{m.partition()}:{m.offset()}" == letter_id]
        if not matches:
            raise DeadLetterNotFoundError(f"no dead letter {letter_id!r} waits in {self.settings.dlq_topic()}")
        message = matches[0]
        letter = _letter(message)
        try:
            parse_event(letter.payload)
        except BadEventError as exc:
            raise ReplayRefusedError(
                f"dead letter {letter_id} is still not an order event ({exc}); it would be parked again — it stays"
            ) from None
        target = letter.source if letter.source != "?" else self.settings.events_topic()
        await self._produce(
            target, key=message.key(), value=letter.payload, headers=[(REPLAY_OF, f"{message.topic()}:{letter_id}")]
        )
        await self._produce(
            self.settings.dlq_topic(),
            key=message.key(),
            value=None,
            headers=[(REPLAYED, letter_id)],
            partition=message.partition(),
        )
        log.info("dead letter replayed", extra={"id": letter_id, "topic": target})
        return Replayed(id=letter_id, target=target, sent=True)

    async def _produce(self, topic: str, *, partition: int | None = None, **message: Any) -> None:
        assert self._producer is not None, "use the store in `async with`"
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        if partition is None:
            self._producer.produce(topic, on_delivery=delivered, **message)
        else:
            self._producer.produce(topic, partition=partition, on_delivery=delivered, **message)
        remaining = await asyncio.to_thread(self._producer.flush, 30)
        if remaining or errors:
            raise ConnectionError(f"Kafka did not acknowledge the message to {topic}: {errors or 'flush timed out'}")
