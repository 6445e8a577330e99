"""What a service contributes to `orderly up`: its long-running processes, each a command line.

Every long-running process answers ``/healthz``, ``/readyz`` and ``/metrics`` on a loopback port of its own: an API on
its API port (``http_port``), a background process (worker, relay, consumer, daemon) on ``health_port``. The port
table is fixed here so that the supervisor, ``orderly status``, Prometheus, compose.yaml and the Kubernetes manifests
agree. ``ORDERLY_UP__PORT_OFFSET`` shifts every process port of ``orderly up`` at once (tests run a private copy of
the whole system beside the usual one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

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


def with_port_offset(spec: ProcessSpec, offset: int) -> ProcessSpec:
    """The same process with every port it is handed moved by ``offset``: its port fields and its port flags.

    A port flag is any ``--<name>-port`` or ``--port`` argument (``--port 8101``, ``--health-port=9111``), so a spec
    that gains a port flag is covered without touching this function.
    """
    if offset == 0:
        return spec
    args: list[str] = []
    shift_next = False
    for arg in spec.args:
        if shift_next:
            args.append(str(int(arg) + offset))
            shift_next = False
        elif _is_port_flag(arg.split("=", 1)[0]) and "=" in arg:
            flag, value = arg.split("=", 1)
            args.append(f"{flag}={int(value) + offset}")
        else:
            args.append(arg)
            shift_next = _is_port_flag(arg)
    return replace(
        spec,
        args=tuple(args),
        http_port=None if spec.http_port is None else spec.http_port + offset,
        health_port=None if spec.health_port is None else spec.health_port + offset,
    )


def _is_port_flag(arg: str) -> bool:
    return arg == "--port" or (arg.startswith("--") and arg.endswith("-port"))


def api_process(name: str, *args: str, port: int) -> ProcessSpec:
    """An API process on ``port`` (`orderly up` shifts it by the offset); ``args`` are given ``--port`` with it."""
    return ProcessSpec(name=name, args=(*args, "--port", str(port)), http_port=port)


def background_process(name: str, *args: str) -> ProcessSpec:
    """A background process: its health port from ``HEALTH_PORTS`` as ``--health-port`` (`orderly up` shifts it by
    the offset), and its name as the ``instance`` of its metrics."""
    port = HEALTH_PORTS[name]
    return ProcessSpec(
        name=name,
        args=(*args, "--health-port", str(port)),
        env={"ORDERLY_PROBE__INSTANCE": name},
        health_port=port,
    )
