"""librdkafka's log: a broker outage is one line per kind of failure, not one per reconnect attempt."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from confluent_kafka import Consumer

from orderly.platform.pools import kafka_config
from orderly.platform.settings import KafkaSettings


async def test_a_lost_broker_is_one_librdkafka_line_not_one_per_reconnect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="librdkafka")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    consumer = Consumer(dict(kafka_config(KafkaSettings(port=port), **{"group.id": "g"})))
    try:
        consumer.subscribe(["t"])
        for _ in range(6):  # 3 s of polls: librdkafka retries the connect every few dozen milliseconds meanwhile
            await asyncio.to_thread(consumer.poll, 0.5)
    finally:
        consumer.close()
    refused = [
        r.getMessage() for r in caplog.records if r.name == "librdkafka" and "Connection refused" in r.getMessage()
    ]
    # At most one: an earlier test of the same run may already have logged this kind of line within the quiet spell.
    assert len(refused) <= 1, refused
