"""Dead letters of ingest: requests the worker parked with ``--skip-poison``, and their replay.

Parking publishes the message to the dead-letter exchange (``ingest.dead`` → ``ingest.requests.dead``) on a channel
with publisher confirms, with headers naming the reason and the source queue, and acks the original only after the
broker confirmed the copy. A crash in between parks it twice; both copies carry the same token, and replaying both
stores the request once (``UNIQUE (token)``).

RabbitMQ cannot address a message inside a queue, so the tool browses: it takes every dead letter without acking,
and closing its channel returns the ones it did not replay to their places (a classic queue keeps their order).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from orderly.ingest.broker import DEAD_LETTER_EXCHANGE
from orderly.ingest.domain import AcceptedRequest, MalformedMessageError
from orderly.ingest.settings import IngestOptions, IngestSettings
from orderly.platform.deadletters import DeadLetter, DeadLetterNotFoundError, Replayed, ReplayRefusedError

log = logging.getLogger(__name__)

REASON = "x-orderly-reason"
SOURCE_QUEUE = "x-orderly-source-queue"
PARKED_AT = "x-orderly-parked-at"


async def park(
    channel: AbstractChannel, *, message: AbstractIncomingMessage, reason: str, options: IngestOptions
) -> None:
    """Publish a copy to the dead-letter queue and wait for the broker's confirm (raises otherwise); ack after this."""
    exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
    copy = aio_pika.Message(
        message.body,
        headers={REASON: reason[:2000], SOURCE_QUEUE: options.queue, PARKED_AT: datetime.now(UTC).isoformat()},
        message_id=message.message_id or f"poison-{uuid.uuid4().hex}",
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await exchange.publish(copy, routing_key=options.dead_letter_queue, mandatory=True)


async def waiting(channel: AbstractChannel, options: IngestOptions) -> int:
    """How many dead letters are ready in the dead-letter queue."""
    declared = await channel.declare_queue(options.dead_letter_queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    details: dict[str, str] = {}
    try:
        request = AcceptedRequest.from_message(message.body)
        details["accepted_at"] = request.accepted_at.isoformat()
    except MalformedMessageError:
        pass
    if REASON in headers:
        reason, source = _text(headers[REASON]), _text(headers.get(SOURCE_QUEUE, "?"))
        parked_at: datetime | None = datetime.fromisoformat(_text(headers[PARKED_AT])) if PARKED_AT in headers else None
    else:  # dead-lettered by the broker (a reject before the worker recorded reasons): x-death says from where
        deaths = headers.get("x-death") or [{}]
        death: Any = deaths[0] if isinstance(deaths, list | tuple) else {}
        reason = f"{_text(death.get('reason', 'rejected'))} (no reason recorded)"
        source = _text(death.get("queue", "?"))
        parked_at = death.get("time") if isinstance(death.get("time"), datetime) else None
    return DeadLetter(
        id=message.message_id or "?",
        payload=message.body,
        reason=reason,
        source=source,
        parked_at=parked_at,
        details=details,
    )


class IngestDeadLetters:
    """`orderly dlq … ingest`: the dead-letter queue; ids are the requests' tokens (the AMQP message id)."""

    pipeline = "ingest"

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.options = settings.ingest
        self._connection: AbstractConnection | None = None
        self._confirming: AbstractChannel | None = None

    async def __aenter__(self) -> Self:
        self._connection = await aio_pika.connect(self.settings.rabbitmq.url(), timeout=10)
        self._confirming = await self._connection.channel(publisher_confirms=True)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    @contextlib.asynccontextmanager
    async def _browse(self) -> Any:
        """Every dead letter, taken unacked; on exit the channel closes and the ones not acked go back in order."""
        assert self._connection is not None, "use the store in `async with`"
        channel = await self._connection.channel()
        try:
            try:
                queue: AbstractQueue = await channel.declare_queue(self.options.dead_letter_queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:  # no worker ever ran here: nothing was parked
                yield []
                return
            taken: list[AbstractIncomingMessage] = []
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                taken.append(message)
            yield taken
        finally:
            if not channel.is_closed:
                await channel.close()

    async def list(self) -> list[DeadLetter]:
        async with self._browse() as taken:
            return [_letter(message) for message in taken]

    async def replay(self, letter_id: str) -> Replayed:
        """Publish the request back to its queue (confirmed), then ack every dead copy of that token.

        The worker stores a token once (``ON CONFLICT (token) DO NOTHING``), so a replay repeated after a crash
        between the confirm and the ack is harmless.
        """
        assert self._confirming is not None, "use the store in `async with`"
        async with self._browse() as taken:
            copies = [message for message in taken if (message.message_id or "?") == letter_id]
            if not copies:
                raise DeadLetterNotFoundError(f"no dead letter {letter_id!r} waits in {self.options.dead_letter_queue}")
            letter = _letter(copies[0])
            try:
                request = AcceptedRequest.from_message(letter.payload)
            except MalformedMessageError as exc:
                raise ReplayRefusedError(
                    f"dead letter {letter_id} is still {exc}; replayed, it would be poison again — it stays parked"
                ) from None
            await self._confirming.default_exchange.publish(
                aio_pika.Message(
                    letter.payload,
                    message_id=str(request.token),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=letter.source,
                mandatory=True,
            )
            for copy in copies:
                await copy.ack()
        log.info("dead letter replayed", extra={"token": letter_id, "queue": letter.source, "copies": len(copies)})
        return Replayed(id=letter_id, target=letter.source, sent=True)
