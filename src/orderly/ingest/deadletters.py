"""Dead letters of ingest: what the worker parked (``--skip-poison``, STOMP frames that break the contract), and replay.

Parking is ``orderly.ingest.broker.DeadLetters``: a confirmed copy in ``ingest.requests.dead`` with headers naming
the reason, the exchange it came through, the queue it was taken from and when; the original is acked only after the
broker confirmed the copy. A crash in between parks it twice; both copies carry the same token, and replaying both
stores the request once (``UNIQUE (token)``).

RabbitMQ cannot address a message inside a queue, so the tool browses: it takes every dead letter without acking,
and closing its channel returns the ones it did not replay to their places (a classic queue keeps their order).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from orderly.ingest.broker import (
    EXCHANGE_HEADER,
    ORDERLY_HEADERS,
    PARKED_AT_HEADER,
    REASON_HEADER,
    SOURCE_QUEUE_HEADER,
)
from orderly.ingest.domain import AcceptedRequest, MalformedMessageError, RejectedFrameError
from orderly.ingest.settings import IngestSettings
from orderly.platform.deadletters import DeadLetter, DeadLetterNotFoundError, Replayed, ReplayRefusedError

log = logging.getLogger(__name__)


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
    if REASON_HEADER in headers:
        reason, source = _text(headers[REASON_HEADER]), _text(headers.get(SOURCE_QUEUE_HEADER, "?"))
        parked = headers.get(PARKED_AT_HEADER)
        parked_at: datetime | None = datetime.fromisoformat(_text(parked)) if parked is not None else None
        details["exchange"] = _text(headers.get(EXCHANGE_HEADER, ""))
        if "token" in headers:  # a STOMP client's token header
            details["token"] = _text(headers["token"])
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
    """`orderly dlq … ingest`: the dead-letter queue; an id is the AMQP message id (an API request's token, or the
    ``dead-…`` id a delivery without one was given when parked)."""

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
    async def _browse(self) -> AsyncIterator[list[AbstractIncomingMessage]]:
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
        """Send the request back the way it came (confirmed), then ack every dead copy of that id.

        An API request goes back to its queue; a STOMP request goes back through the STOMP exchange with its client's
        headers, so that the worker reads it as it read it first. One that would be refused again stays parked. The
        worker stores a token once (``ON CONFLICT (token) DO NOTHING``), so a replay repeated after a crash between
        the confirm and the ack is harmless.
        """
        assert self._confirming is not None, "use the store in `async with`"
        async with self._browse() as taken:
            copies = [message for message in taken if (message.message_id or "?") == letter_id]
            if not copies:
                raise DeadLetterNotFoundError(f"no dead letter {letter_id!r} waits in {self.options.dead_letter_queue}")
            letter, headers = _letter(copies[0]), dict(copies[0].headers or {})
            through = letter.details.get("exchange", "")
            try:
                if through == self.options.stomp_exchange:
                    AcceptedRequest.from_stomp(
                        letter.payload,
                        token=_text(headers["token"]) if "token" in headers else None,
                        received_at=datetime.now(UTC),
                        max_numbers=self.options.max_numbers,
                        max_body_bytes=self.options.stomp_max_body_bytes,
                    )
                else:
                    AcceptedRequest.from_message(letter.payload)
            except (MalformedMessageError, RejectedFrameError) as exc:
                raise ReplayRefusedError(
                    f"dead letter {letter_id} is still refused ({exc}); replayed, it would be parked again"
                    " — it stays parked"
                ) from None
            await self._send_back(letter, headers, through=through)
            for copy in copies:
                await copy.ack()
        target = f"{through} → {letter.source}" if through else letter.source
        log.info("dead letter replayed", extra={"id": letter_id, "target": target, "copies": len(copies)})
        return Replayed(id=letter_id, target=target, sent=True)

    async def _send_back(self, letter: DeadLetter, headers: dict[str, Any], *, through: str) -> None:
        assert self._confirming is not None, "use the store in `async with`"
        message = aio_pika.Message(
            letter.payload,
            headers={k: v for k, v in headers.items() if k not in ORDERLY_HEADERS and k != "x-death"},
            message_id=letter.id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        if through:
            exchange = await self._confirming.get_exchange(through, ensure=False)
            await exchange.publish(message, routing_key=letter.source, mandatory=True)
        else:
            await self._confirming.default_exchange.publish(message, routing_key=letter.source, mandatory=True)
