"""A notifier is ready when librdkafka's statistics show a broker connection up (no broker round trip per probe)."""

from __future__ import annotations

import json

from orderly.notifier.consumer import Notifier
from orderly.notifier.settings import NotifierSettings


def stats(*brokers: tuple[int, str]) -> str:
    return json.dumps({"brokers": {f"b{i}": {"nodeid": n, "state": s} for i, (n, s) in enumerate(brokers)}})


def test_ready_only_while_a_real_broker_connection_is_up() -> None:
    notifier = Notifier(NotifierSettings())
    assert not notifier.broker_up  # nothing known before the first statistics
    notifier._on_stats(stats((-1, "UP"), (1, "INIT")))  # only the bootstrap connection: not yet
    assert not notifier.broker_up
    notifier._on_stats(stats((-1, "UP"), (1, "UP")))
    assert notifier.broker_up
    notifier._on_stats(stats((-1, "DOWN"), (1, "CONNECT")))  # Kafka went away
    assert not notifier.broker_up
