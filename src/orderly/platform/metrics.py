"""Metric families shared by several processes, defined once so that every process exports the same names.

Each process serves the default registry on its own port; the label ``service`` says whose figure it is.
"""

from __future__ import annotations

from prometheus_client import Gauge

DEAD_LETTERS = Gauge(
    "orderly_dead_letters",
    "Dead letters waiting for an operator (ingest dead-letter queue, notifier DLQ topic, items dead-letter stream)",
    ["service"],
)
