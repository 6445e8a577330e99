"""The batched confirmed publisher against the real broker: every confirmed message is queued, persistent, once, in
publish order; unroutable or closed-channel publishes are refused, never confirmed."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime

import aio_pika
import pytest
from uuid_utils.compat import uuid7

from orderly.ingest.broker import Publisher
from orderly.ingest.domain import AcceptedRequest, BrokerUnavailableError
from orderly.platform.settings import InfraSettings


def request(i: int) -> AcceptedRequest:
    return AcceptedRequest(token=uuid7(), numbers=(i,), accepted_at=datetime.now(UTC))


async def test_concurrent_publishes_are_each_confirmed_and_queued_in_order(infra: InfraSettings) -> None:
    name = f"publisher.{secrets.token_hex(3)}"
    async with await aio_pika.connect_robust(infra.rabbitmq.url()) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue(name, durable=True)
        publisher = Publisher(channel, queue=name, timeout=10)
        requests = [request(i) for i in range(500)]
        # Started in this order on one loop: they share flushes, and the queue keeps the order they were published.
        await asyncio.gather(*(publisher.publish(r) for r in requests))
        # The aiormq bookkeeping is left clean: no pending confirmation, no message_id kept.
        underlay = await channel.get_underlay_channel()
        assert not underlay.confirmations  # type: ignore[attr-defined]
        assert not underlay.message_id_delivery_tag  # type: ignore[attr-defined]
        received = []
        for _ in requests:
            message = await queue.get(timeout=5)
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            received.append(AcceptedRequest.from_message(message.body))
            await message.ack()
        assert received == requests
        assert await queue.get(fail=False) is None
        await queue.delete(if_unused=False, if_empty=False)


async def test_unroutable_publish_is_not_confirmed(infra: InfraSettings) -> None:
    async with await aio_pika.connect_robust(infra.rabbitmq.url()) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publisher = Publisher(channel, queue=f"missing.{secrets.token_hex(3)}", timeout=10)
        results = await asyncio.gather(*(publisher.publish(request(i)) for i in range(20)), return_exceptions=True)
        assert all(isinstance(r, BrokerUnavailableError) for r in results), results


async def test_publish_on_a_closed_channel_is_refused(infra: InfraSettings) -> None:
    name = f"publisher.{secrets.token_hex(3)}"
    async with await aio_pika.connect_robust(infra.rabbitmq.url()) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(name, durable=True, auto_delete=True)
        publisher = Publisher(channel, queue=name, timeout=10)
        await channel.close()
        with pytest.raises(BrokerUnavailableError):
            await publisher.publish(request(1))
