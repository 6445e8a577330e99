"""NATS JetStream adapter: the change-event stream, created idempotently, and a publisher that awaits PubAcks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from orderly.items.repository import OutboxRow


async def ensure_stream(js: JetStreamContext, *, name: str, duplicate_window_seconds: float) -> None:
    """Create the stream when missing; a second call (or a concurrent process) leaves it as it is."""
    config = StreamConfig(
        name=name,
        subjects=[f"{name}.>"],
        storage=StorageType.FILE,
        duplicate_window=duplicate_window_seconds,
    )
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)


def consumer_config(*, durable: str, ack_wait_seconds: float, max_ack_pending: int, max_deliver: int) -> ConsumerConfig:
    """The audit's durable pull consumer; JetStream stops redelivering after ``max_deliver`` deliveries, and the audit
    parks an event on that last delivery (see orderly.items.deadletters) so that nothing is dropped silently."""
    return ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_seconds,
        max_ack_pending=max_ack_pending,
        max_deliver=max_deliver,
    )


async def publish_all(js: JetStreamContext, *, stream: str, rows: Sequence[OutboxRow]) -> None:
    """Publish every row with its event id as ``Nats-Msg-Id`` and wait for all PubAcks (raises if any fails)."""
    await asyncio.gather(
        *(
            js.publish(f"{stream}.{row.subject}", row.payload, stream=stream, headers={"Nats-Msg-Id": row.event_id})
            for row in rows
        )
    )
