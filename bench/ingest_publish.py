"""A/B of ingest's confirmed publish: the hand-built frame path against aiormq's public ``basic_publish(wait=False)``.

Both publish the API's messages (persistent, ``mandatory``, ``message_id`` = token) on one confirm channel of the
shared stack's RabbitMQ, with as many publishes in flight as the API bench's wrk connections, and return only after the
broker's confirm of each message. Rounds alternate A, B, A, B, ...; the figure of each side is its median round.
Measured: confirmed messages per second and this process's CPU seconds per 1,000 messages.

    flock /tmp/orderly-bench.lock uv run python -m bench.ingest_publish
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel
from uuid_utils.compat import uuid7

from orderly.ingest import broker
from orderly.ingest.domain import AcceptedRequest, BrokerUnavailableError
from orderly.platform.settings import InfraSettings

COUNT = int(os.environ.get("BENCH_PUBLISH_COUNT", "20000"))
IN_FLIGHT = int(os.environ.get("BENCH_PUBLISH_IN_FLIGHT", "50"))
ROUNDS = int(os.environ.get("BENCH_PUBLISH_ROUNDS", "3"))


class PublicApiPublisher:
    """The same contract as ``broker.Publisher`` through aiormq's public ``basic_publish(..., wait=False)``."""

    def __init__(self, channel: AbstractChannel, *, queue: str, timeout: float) -> None:
        self.channel, self.queue, self.timeout = channel, queue, timeout

    async def publish(self, request: AcceptedRequest) -> None:
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=2, content_type="application/json", message_id=str(request.token)
        )
        try:
            async with asyncio.timeout(self.timeout):
                # ``wait`` is not in aiormq's abstract channel, only in its Channel (which aio-pika hands out).
                channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
                result = await channel.basic_publish(
                    request.to_message(), routing_key=self.queue, properties=properties, mandatory=True, wait=False
                )
        except Exception as exc:
            raise BrokerUnavailableError(f"publish not confirmed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise BrokerUnavailableError(f"publish not confirmed: {type(result).__name__}")


Publish = Callable[[AcceptedRequest], Awaitable[None]]


async def one_round(publish: Publish) -> dict[str, float]:
    requests = [
        AcceptedRequest(token=uuid7(), numbers=(i, -i, 42), accepted_at=datetime.now(UTC)) for i in range(COUNT)
    ]
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:
            await publish(request)

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"msg_per_s": round(COUNT / seconds, 1), "cpu_s_per_1000": round(cpu / COUNT * 1000, 4)}


async def main() -> None:
    settings = InfraSettings()
    queue = f"bench.publish.{secrets.token_hex(3)}"
    results: dict[str, list[dict[str, float]]] = {"hand-built frames": [], "aiormq basic_publish(wait=False)": []}
    async with await aio_pika.connect(settings.rabbitmq.url()) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        declared = await channel.declare_queue(queue, durable=True)
        sides: dict[str, Publish] = {
            "hand-built frames": broker.Publisher(channel, queue=queue, timeout=30).publish,
            "aiormq basic_publish(wait=False)": PublicApiPublisher(channel, queue=queue, timeout=30).publish,
        }
        try:
            await one_round(sides["hand-built frames"])  # warm-up: connection, queue, code paths
            await declared.purge()
            for _ in range(ROUNDS):
                for name, publish in sides.items():
                    results[name].append(await one_round(publish))
                    await declared.purge()
                    print(name, results[name][-1], flush=True)
        finally:
            await declared.delete(if_unused=False, if_empty=False)
    summary: dict[str, Any] = {
        "count": COUNT,
        "in_flight": IN_FLIGHT,
        "rounds": ROUNDS,
        "python": sys.version.split()[0],
    }
    for name, rounds in results.items():
        summary[name] = {
            "median_msg_per_s": statistics.median(r["msg_per_s"] for r in rounds),
            "median_cpu_s_per_1000": statistics.median(r["cpu_s_per_1000"] for r in rounds),
            "rounds": rounds,
        }
    hand, public = summary["hand-built frames"], summary["aiormq basic_publish(wait=False)"]
    summary["hand-built / public, msg/s"] = round(hand["median_msg_per_s"] / public["median_msg_per_s"], 3)
    summary["public / hand-built, CPU per message"] = round(
        public["median_cpu_s_per_1000"] / hand["median_cpu_s_per_1000"], 3
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
