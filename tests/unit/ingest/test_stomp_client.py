"""The STOMP client's waits are bounded: a broker that hangs costs the caller its timeout, never its thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from orderly.ingest.client import NotAcceptedError, StompSender
from orderly.ingest.settings import IngestSettings
from orderly.platform.settings import RabbitMQSettings


@pytest.fixture
def silent_broker() -> Iterator[int]:
    """A port whose listener never accepts: the kernel completes the handshake, and no CONNECTED ever comes back.

    That is what a client meets when the broker hangs, or is still starting, with its STOMP listener open.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_connect_to_a_broker_that_never_answers_fails_within_the_timeout(silent_broker: int) -> None:
    settings = IngestSettings(rabbitmq=RabbitMQSettings(stomp_port=silent_broker))
    outcome: list[str] = []

    def connect() -> None:
        try:
            with StompSender(settings, timeout=0.5):
                outcome.append("connected")
        except NotAcceptedError as exc:
            outcome.append(str(exc))

    caller = threading.Thread(target=connect, daemon=True)
    caller.start()
    caller.join(30)  # a deadline for this test only: a caller still blocked after it is the failure being tested
    assert not caller.is_alive(), "connect() is still waiting for a broker that never answers"
    assert outcome == ["STOMP connect failed: no CONNECTED within 0.5 s"]
