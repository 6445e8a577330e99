"""Logging: a client library's reconnect attempts do not flood the log."""

from __future__ import annotations

import logging

from orderly.platform.logging import RepeatFilter, reconnect_attempt


def test_a_library_reconnect_line_passes_once_per_outage_not_once_per_attempt() -> None:
    now = [0.0]
    gate = RepeatFilter(reconnect_attempt, quiet_s=30, clock=lambda: now[0])

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), None)

    attempt = ("aiormq.connection", "error when creating transport: %r")
    passed = []
    for second in range(0, 120, 5):  # a broker down for two minutes, retried every 5 s
        now[0] = second
        passed.append(gate.filter(record(*attempt)))
    assert passed.count(True) == 1
    assert gate.filter(record("orderly.ingest.app", "rabbitmq unavailable: %s; retrying"))  # ours always pass
    now[0] = 200.0  # the next outage, after a quiet spell
    assert gate.filter(record(*attempt))


def test_librdkafka_warnings_of_one_facility_pass_once_across_clients() -> None:
    from orderly.platform.pools import _kafka_line_kind

    now = [0.0]
    gate = RepeatFilter(_kafka_line_kind, quiet_s=30, clock=lambda: now[0])

    def line(client: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("librdkafka", level, __file__, 1, "%s [%s] %s", ("FAIL", client, "refused"), None)

    assert gate.filter(line("producer-1"))
    now[0] = 5.0
    assert not gate.filter(line("producer-2"))  # a fresh client, the same kind of line
    assert gate.filter(line("producer-2", logging.INFO))  # below WARNING: never judged
