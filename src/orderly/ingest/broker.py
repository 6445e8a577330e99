"""RabbitMQ adapters: the queue's declaration (shared by API and worker), the dead-letter parking and the confirmed
publisher."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiormq.abc import ChannelFrame
from pamqp.header import ContentHeader

from orderly.ingest.domain import AcceptedRequest, BrokerUnavailableError
from orderly.ingest.settings import IngestOptions

DEAD_LETTER_EXCHANGE = "ingest.dead"

# Anything that means "the broker did not confirm": the connection or channel is gone, a nack, a timeout.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPException,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika raises it for a channel that is closed or being reopened
)


def queue_arguments(options: IngestOptions) -> dict[str, Any]:
    return {
        "x-queue-type": options.queue_type,
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": options.dead_letter_queue,
    }


async def declare_queues(channel: AbstractChannel, options: IngestOptions) -> AbstractQueue:
    """Declare the durable request queue, its dead-letter queue and the STOMP entry (idempotent); returns the
    request queue."""
    dead = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dead_queue = await channel.declare_queue(options.dead_letter_queue, durable=True)
    await dead_queue.bind(dead, routing_key=options.dead_letter_queue)
    queue = await channel.declare_queue(options.queue, durable=True, arguments=queue_arguments(options))
    stomp = await channel.declare_exchange(options.stomp_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    await queue.bind(stomp)
    return queue


# The headers of a parked copy: why, through which exchange and from which queue it came, and when.
REASON_HEADER = "x-orderly-reason"
EXCHANGE_HEADER = "x-orderly-exchange"
SOURCE_QUEUE_HEADER = "x-orderly-source-queue"
PARKED_AT_HEADER = "x-orderly-parked-at"
ORDERLY_HEADERS = (REASON_HEADER, EXCHANGE_HEADER, SOURCE_QUEUE_HEADER, PARKED_AT_HEADER)
REASON_MAX_CHARS = 2000


class DeadLetters:
    """The one place ingest parks a delivery: a copy in the dead-letter queue with its reason, confirmed by the broker
    before the caller acks the original. Used for ``--skip-poison`` and for STOMP frames that break the contract;
    ``orderly dlq`` reads what it writes (orderly.ingest.deadletters).

    A plain reject would dead-letter it too, but with no word of why; the copy carries the reason, the exchange it
    came through, the queue it was taken from, when it was parked and its own headers (a STOMP client's ``token``).
    It keeps the message id (an API request's token); a delivery without one gets a fresh id, so that every dead
    letter can be named.
    """

    def __init__(self, channel: AbstractChannel, *, queue: str, source: str) -> None:
        self.channel, self.queue, self.source = channel, queue, source

    async def park(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Publish the copy and wait for the broker's confirm (raises otherwise); ack the original after this."""
        headers = {
            **(message.headers or {}),
            REASON_HEADER: reason[:REASON_MAX_CHARS],
            EXCHANGE_HEADER: message.exchange or "",
            SOURCE_QUEUE_HEADER: self.source,
            PARKED_AT_HEADER: datetime.now(UTC).isoformat(),
        }
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id or f"dead-{uuid.uuid4().hex}",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.channel.default_exchange.publish(copy, routing_key=self.queue, mandatory=True)


def _forget_message_id(channel: Any, message_id: str | None, tag: int, _confirmation: asyncio.Future[Any]) -> None:
    # As aiormq's basic_publish does: the message_id → tag map only serves a Basic.Return before the confirm.
    if channel.message_id_delivery_tag.get(message_id) == tag:
        channel.message_id_delivery_tag.pop(message_id)


def _ensure_open(channel: AbstractChannel | aiormq.abc.AbstractChannel) -> None:
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError("channel closed")


class Publisher:
    """Publishes a request as a persistent message and returns only after the broker confirmed *that* message.

    Concurrent requests share socket writes: ``publish`` queues its message, and one flush per event-loop turn writes
    every queued message (Basic.Publish + header + body each, as ``aiormq.Channel.basic_publish`` would) in a single
    frame buffer, registering one confirmation future per delivery tag in aiormq's own table. Each request then awaits
    its own future: the broker's Basic.Ack (single or ``multiple``) for its tag resolves it; a nack, a return (the
    message is ``mandatory``: unroutable raises PublishError), a closed channel or the timeout fails it, and the caller
    answers 503 after revoking the token. Writing one buffer per turn instead of one per message halves the API's
    CPU per request (one send instead of one per message, no per-message lock, timeout and drain bookkeeping).
    The flush takes the channel's own publish lock, so delivery tags stay in step with anything published through
    aiormq on the same channel.
    """

    def __init__(self, channel: AbstractChannel, *, queue: str, timeout: float) -> None:
        self.channel, self.queue, self.timeout = channel, queue, timeout
        self._pending: list[tuple[bytes, aiormq.spec.Basic.Properties, asyncio.Future[asyncio.Future[Any]]]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, request: AcceptedRequest) -> None:
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=2, content_type="application/json", message_id=str(request.token)
        )
        body = request.to_message()
        try:
            async with asyncio.timeout(self.timeout):
                _ensure_open(self.channel)
                slot: asyncio.Future[asyncio.Future[Any]] = asyncio.get_running_loop().create_future()
                self._pending.append((body, properties, slot))
                if self._flush_task is None:
                    self._flush_task = asyncio.create_task(self._flush())
                    self._tasks.add(self._flush_task)  # a strong reference until it is done
                    self._flush_task.add_done_callback(self._tasks.discard)
                confirmation = await slot
                try:
                    result = await confirmation
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # our timeout (→ TimeoutError) or a real cancellation
                    raise BrokerUnavailableError("publish not confirmed: confirmation cancelled") from None
        except BrokerUnavailableError:
            raise
        except Exception as exc:  # BROKER_ERRORS and more
            # aiormq rejects pending confirmations with the close reason (or a bare Exception) when the channel or the
            # connection goes away: anything but an Ack means "not accepted".
            raise BrokerUnavailableError(f"publish not confirmed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise BrokerUnavailableError(f"publish not confirmed: {type(result).__name__}")

    async def _flush(self) -> None:
        channel: aiormq.abc.AbstractChannel | None = None
        items: list[tuple[bytes, aiormq.spec.Basic.Properties, asyncio.Future[asyncio.Future[Any]]]] = []
        try:
            channel = await self.channel.get_underlay_channel()
            async with channel.lock:  # type: ignore[attr-defined]
                # Take what queued up while waiting; later publishes start the next flush.
                items, self._pending, self._flush_task = self._pending, [], None
                _ensure_open(channel)
                # Marshal and enqueue first, register afterwards: nothing runs between a successful put and the
                # registration below, and if the put fails or is cancelled nothing was sent and no delivery tag was
                # used, so our tags never drift from the broker's count.
                sent = [(props, slot) for _body, props, slot in items if not slot.done()]  # done: timed out, unsent
                frames: list[Any] = []
                for body, properties, slot in items:
                    if not slot.done():
                        frames += [
                            aiormq.spec.Basic.Publish(exchange="", routing_key=self.queue, mandatory=True),
                            ContentHeader(properties=properties, body_size=len(body)),
                            *channel._split_body(body),  # type: ignore[attr-defined]
                        ]
                if not frames:
                    return
                await channel.write_queue.put(  # type: ignore[attr-defined]
                    ChannelFrame.marshall(channel_number=channel.number, frames=frames)
                )
                for properties, slot in sent:
                    channel.delivery_tag += 1  # type: ignore[attr-defined]
                    tag = channel.delivery_tag  # type: ignore[attr-defined]
                    confirmation = channel.create_future()  # aiormq rejects it if the channel closes
                    channel.confirmations[tag] = confirmation  # type: ignore[attr-defined]
                    # For a Basic.Return: aiormq finds the confirmation by message_id and fails it (PublishError).
                    channel.message_id_delivery_tag[properties.message_id] = tag  # type: ignore[attr-defined]
                    confirmation.add_done_callback(partial(_forget_message_id, channel, properties.message_id, tag))
                    if not slot.done():  # its request may have timed out while the put waited: the ack is ignored
                        slot.set_result(confirmation)
        except BaseException as exc:
            if self._flush_task is asyncio.current_task():
                items, self._pending, self._flush_task = items + self._pending, [], None
            for _body, _properties, slot in items:
                if not slot.done():
                    slot.set_exception(exc if isinstance(exc, Exception) else RuntimeError("publish flush cancelled"))
            if not isinstance(exc, Exception):
                raise
