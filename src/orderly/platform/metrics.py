"""The pipeline metrics every dashboard and alert relies on, defined once so that each name has one meaning.

The names are fixed by the operations contract (docs/operations.md, "Metrics and alerts"). Services set them; nothing
here knows a service's rules. Gauges that need a query (outbox, queue depth, lag, dead letters) are refreshed by the
process's probe server right before a scrape (``orderly.platform.probes``), never on the hot path.
"""

from __future__ import annotations

import time
from types import TracebackType

from prometheus_client import Gauge, Histogram

OUTBOX_PENDING = Gauge("orderly_outbox_pending", "Outbox rows not yet relayed", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "orderly_outbox_oldest_age_seconds", "Age of the oldest outbox row not yet relayed (0 when empty)", ["service"]
)
QUEUE_DEPTH = Gauge("orderly_queue_depth", "Messages ready in the service's work queue", ["service"])
ACTIVE = Gauge(
    "orderly_active", "1 on the single active consumer or relay lock holder, 0 on a standby", ["service", "instance"]
)
CONSUMER_LAG = Gauge("orderly_consumer_lag", "Messages not yet consumed, per partition", ["service", "partition"])
DAEMON_LAG = Gauge(
    "orderly_daemon_lag_events", "Events committed but not yet printed by the daemon, per cursor", ["daemon"]
)
DEAD_LETTERS = Gauge(
    "orderly_dead_letters",
    "Dead letters waiting for an operator (ingest dead-letter queue, notifier DLQ topic, items dead-letter stream)",
    ["service"],
)
BATCH_SIZE = Histogram(
    "orderly_batch_size",
    "Items per batch a batcher committed",
    ["service"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000),
)
BATCH_SECONDS = Histogram(
    "orderly_batch_seconds",
    "Time a batcher spent committing one batch",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class BatchTimer:
    """Observes one batch's size and duration for a service; label children are bound once (cheap per batch).

    Use as ``with timer.batch(size):`` around the commit; a batch that raises is not observed.
    """

    __slots__ = ("_seconds", "_size")

    def __init__(self, service: str) -> None:
        self._size = BATCH_SIZE.labels(service)
        self._seconds = BATCH_SECONDS.labels(service)

    def observe(self, size: int, seconds: float) -> None:
        self._size.observe(size)
        self._seconds.observe(seconds)

    def batch(self, size: int) -> _Timing:
        return _Timing(self, size)


class _Timing:
    __slots__ = ("_size", "_started", "_timer")

    def __init__(self, timer: BatchTimer, size: int) -> None:
        self._timer, self._size, self._started = timer, size, 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self, exc_type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._timer.observe(self._size, time.perf_counter() - self._started)
