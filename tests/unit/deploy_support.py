"""What compose.yaml, the Kubernetes manifests and `orderly up` must agree on: process kinds and their probe ports."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from unittest import mock

from orderly.platform.processes import HEALTH_PORTS, ProcessSpec
from orderly.runner import all_processes

ROOT = Path(__file__).resolve().parents[2]
# Flags that differ per copy or per runner, not per process kind.
PER_INSTANCE_FLAGS = {"--port", "--health-port", "--instance", "--log-file"}

Kind = tuple[str, ...]


def process_kind(args: list[str] | tuple[str, ...]) -> Kind:
    """A command line without its per-instance flags: ("ingest", "worker"), ("notifier",), …"""
    kind, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in PER_INSTANCE_FLAGS:
            skip = True
        else:
            kind.append(arg)
    return tuple(kind)


def flag(args: list[str] | tuple[str, ...], name: str) -> str | None:
    """The value after ``name`` in a command line, if any."""
    return args[args.index(name) + 1] if name in args else None


def long_running() -> list[ProcessSpec]:
    """The processes of `orderly up` on the contract's ports (an ORDERLY_UP__PORT_OFFSET in the environment shifts a
    private copy of the system, not the ports that compose.yaml and the manifests use)."""
    with mock.patch.dict(os.environ, {"ORDERLY_UP__PORT_OFFSET": "0"}):
        return [spec for spec in all_processes() if not spec.init]


def local_counts() -> Counter[Kind]:
    """How many copies of each process kind `orderly up` runs."""
    return Counter(process_kind(spec.args) for spec in long_running())


def probe_ports() -> dict[Kind, set[int]]:
    """Where each kind answers /healthz and /readyz under `orderly up`: the API port, or its HEALTH_PORTS entry."""
    ports: dict[Kind, set[int]] = {}
    for spec in long_running():
        port = spec.probe_port or HEALTH_PORTS.get(spec.name)
        assert port, f"{spec.name} has neither an API port nor a health port"
        ports.setdefault(process_kind(spec.args), set()).add(port)
    return ports


def is_api(kind: Kind) -> bool:
    return "api" in kind
