"""RabbitMQ adapters: the queue's declaration (shared by API and worker) and the confirmed publisher."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue

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
    """Declare the durable request queue and its dead-letter queue (idempotent); returns the request queue."""
    dead = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dead_queue = await channel.declare_queue(options.dead_letter_queue, durable=True)
    await dead_queue.bind(dead, routing_key=options.dead_letter_queue)
    return await channel.declare_queue(options.queue, durable=True, arguments=queue_arguments(options))


class Publisher:
    """Publishes a request as a persistent message and returns only after the broker confirmed it."""

    def __init__(self, channel: AbstractChannel, *, queue: str, timeout: float) -> None:
        self.channel, self.queue, self.timeout = channel, queue, timeout

    async def publish(self, request: AcceptedRequest) -> None:
        # Straight to the underlying aiormq channel: aio-pika's Message and Exchange.publish add nothing here but CPU
        # on the API's hot path. Same frames as before: persistent, mandatory (an unroutable message is returned and
        # raises PublishError, never confirmed as accepted), message_id = token, and the broker's Basic.Ack awaited.
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=2, content_type="application/json", message_id=str(request.token)
        )
        try:
            if self.channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
            channel = await self.channel.get_underlay_channel()
            confirmation = await channel.basic_publish(
                request.to_message(),
                routing_key=self.queue,
                properties=properties,
                mandatory=True,
                timeout=self.timeout,
            )
        except BROKER_ERRORS as exc:
            raise BrokerUnavailableError(f"publish not confirmed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BrokerUnavailableError(f"publish not confirmed: {type(confirmation).__name__}")
