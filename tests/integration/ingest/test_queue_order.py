"""The redelivery-order test that chose the queue type (rabbitmq-server#10499): classic keeps FIFO, quorum does not."""

from __future__ import annotations

import asyncio
import secrets

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from orderly.platform.settings import InfraSettings

COUNT = 40
PREFETCH = 10
ACKED = 3


async def _order_after_return(settings: InfraSettings, queue_type: str, how: str) -> list[int]:
    """Publish 0..COUNT-1, take PREFETCH, ack the first ACKED, return the rest (``how``), then read the queue."""
    name = f"order.{queue_type}.{how}.{secrets.token_hex(3)}"
    connection = await aio_pika.connect(settings.rabbitmq.url())
    async with connection:
        channel = await connection.channel()
        arguments = {"x-queue-type": queue_type, "x-single-active-consumer": True}
        await channel.declare_queue(name, durable=True, arguments=arguments)
        for i in range(COUNT):
            message = aio_pika.Message(str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=name)

        first = await connection.channel()
        await first.set_qos(prefetch_count=PREFETCH)
        taken: list[AbstractIncomingMessage] = []
        full = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            taken.append(message)
            if len(taken) == PREFETCH:
                full.set()

        await (await first.get_queue(name)).consume(take)
        await asyncio.wait_for(full.wait(), 10)
        await taken[ACKED - 1].ack(multiple=True)
        if how == "nack_multiple":
            await taken[-1].nack(multiple=True, requeue=True)
        elif how == "nack_one_by_one":
            for message in taken[ACKED:]:
                await message.nack(requeue=True)
        await first.close()  # "close": the crash case, the broker returns what was unacked

        second = await connection.channel()
        await second.set_qos(prefetch_count=100)
        seen: list[int] = []
        done = asyncio.Event()

        async def read(message: AbstractIncomingMessage) -> None:
            seen.append(int(message.body))
            await message.ack()
            if len(seen) == COUNT - ACKED:
                done.set()

        await (await second.get_queue(name)).consume(read)
        await asyncio.wait_for(done.wait(), 10)
        await second.queue_delete(name)
        return seen


@pytest.mark.parametrize("how", ["close", "nack_multiple", "nack_one_by_one"])
async def test_classic_queue_redelivers_returned_messages_in_original_order(infra: InfraSettings, how: str) -> None:
    assert await _order_after_return(infra, "classic", how) == list(range(ACKED, COUNT))


async def test_quorum_queue_puts_nacked_messages_behind_newer_ones(infra: InfraSettings) -> None:
    """Why ingest does not use a quorum queue: on RabbitMQ 3.10 a nacked message comes back after newer ones."""
    seen = await _order_after_return(infra, "quorum", "nack_multiple")
    assert seen != list(range(ACKED, COUNT))
    assert seen[0] == PREFETCH  # the first message never delivered overtakes the returned ones
