"""What a service contributes to `orderly up`: its long-running processes, each a command line.

Every long-running process answers ``/healthz``, ``/readyz`` and ``/metrics`` on a loopback port of its own: an API on
its API port (``http_port``), a background process (worker, relay, consumer, daemon) on ``health_port``. The port
table is fixed here so that the supervisor, ``orderly status``, Prometheus, compose.yaml and the Kubernetes manifests
agree. ``ORDERLY_UP__PORT_OFFSET`` shifts every process port of ``orderly up`` at once (tests run a private copy of
the whole system beside the usual one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

SUPERVISOR_PORT = 9100  # `orderly up` itself: /status (JSON) and /metrics (restarts, states)

# Background processes: the port of their /healthz, /readyz and /metrics.
HEALTH_PORTS: dict[str, int] = {
    "ingest-worker-1": 9111,
    "ingest-worker-2": 9112,
    "ingest-daemon": 9113,
    "items-relay": 9311,
    "items-audit": 9312,
    "loms-relay": 9411,
    "notifier-1": 9421,
    "notifier-2": 9422,
    "notifier-3": 9423,
}


def port_offset() -> int:
    """``ORDERLY_UP__PORT_OFFSET``: added to every process port that `orderly up` hands out (0 by default)."""
    raw = os.environ.get("ORDERLY_UP__PORT_OFFSET", "0")
    try:
        offset = int(raw)
    except ValueError:
        raise ValueError(f"ORDERLY_UP__PORT_OFFSET must be an integer, got {raw!r}") from None
    if not 0 <= offset <= 10_000:
        raise ValueError(f"ORDERLY_UP__PORT_OFFSET must be between 0 and 10000, got {offset}")
    return offset


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a service as `orderly up` (and compose.yaml) runs it."""

    name: str  # unique, e.g. "ingest-api", "sums-2", "notifier-3"
    args: tuple[str, ...]  # arguments after `orderly`, e.g. ("ingest", "api", "--port", "8101")
    env: dict[str, str] = field(default_factory=dict)
    http_port: int | None = None  # an API: `orderly up` waits for GET /readyz and lists /docs
    health_port: int | None = None  # a background process: its /healthz, /readyz and /metrics
    init: bool = False  # a one-shot step (migrations, topic creation) that must succeed before the rest starts

    @property
    def probe_port(self) -> int | None:
        """Where this process answers /healthz, /readyz and /metrics (None for init steps)."""
        return self.http_port or self.health_port


def api_process(name: str, *args: str, port: int) -> ProcessSpec:
    """An API process on ``port`` shifted by the offset; ``args`` are given ``--port`` with it."""
    shifted = port + port_offset()
    return ProcessSpec(name=name, args=(*args, "--port", str(shifted)), http_port=shifted)


def background_process(name: str, *args: str) -> ProcessSpec:
    """A background process: its health port from ``HEALTH_PORTS`` (shifted by the offset) as ``--health-port``, and
    its name as the ``instance`` of its metrics."""
    port = HEALTH_PORTS[name] + port_offset()
    return ProcessSpec(
        name=name,
        args=(*args, "--health-port", str(port)),
        env={"ORDERLY_PROBE__INSTANCE": name},
        health_port=port,
    )
