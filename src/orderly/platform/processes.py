"""What a service contributes to `orderly up`: its long-running processes, each a command line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a service as `orderly up` (and compose.yaml) runs it."""

    name: str  # unique, e.g. "ingest-api", "sums-2", "notifier-3"
    args: tuple[str, ...]  # arguments after `orderly`, e.g. ("ingest", "api", "--port", "8101")
    env: dict[str, str] = field(default_factory=dict)
    http_port: int | None = None  # when set, `orderly up` waits for GET /readyz and lists /docs
    init: bool = False  # a one-shot step (migrations, topic creation) that must succeed before the rest starts
