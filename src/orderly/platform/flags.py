"""Command-line flags shared by the background processes (kept apart so that parsing them loads nothing heavy)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

HealthPort = Annotated[
    int | None,
    typer.Option("--health-port", min=0, max=65535, help="Serve /healthz, /readyz and /metrics on this port (0: off)."),
]


def use_health_port(port: int | None) -> None:
    """Hand a ``--health-port`` flag to the settings (flags win over the environment and the file)."""
    if port is not None:
        os.environ["ORDERLY_PROBE__PORT"] = str(port)
