"""`orderly items …`: parse flags, build settings, hand over to a composition root."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer

from orderly.items.settings import ITEMS_HTTP_PORT, ItemsSettings
from orderly.platform.flags import HealthPort, use_health_port

if TYPE_CHECKING:
    from orderly.platform.lifecycle import Shutdown

app = typer.Typer(help="items: CRUD with row locks, a never-stale list cache, a change log in ClickHouse.")

Burst = Annotated[bool, typer.Option("--burst", help="stop when there is nothing left to do (tests, one-off runs)")]


@app.command()
def migrate() -> None:
    """Create the databases, tables and the JetStream stream when missing (idempotent)."""
    from orderly.items.migrate import migrate as run_migrate
    from orderly.platform.lifecycle import run_oneshot
    from orderly.platform.logging import configure_logging

    settings = ItemsSettings()
    configure_logging(settings.log, process="items-migrate")
    run_oneshot(lambda: asyncio.run(run_migrate(settings)))


@app.command()
def api(
    port: Annotated[int, typer.Option(help="HTTP port")] = ITEMS_HTTP_PORT,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    workers: Annotated[int | None, typer.Option(help="HTTP worker processes")] = None,
) -> None:
    """Serve the HTTP API."""
    from orderly.platform.http import export_to_environment, serve

    export_to_environment("ORDERLY_HTTP__", {"port": port, "host": host, "workers": workers})
    settings = ItemsSettings()
    serve("orderly.items.app:create_app", settings.http, process_name="orderly-items-api")


@app.command()
def relay(burst: Burst = False, health_port: HealthPort = None) -> None:
    """Move outbox rows to the JetStream stream (Nats-Msg-Id = event id), deleting them after the PubAck."""
    from orderly.items.relay import run_relay

    use_health_port(health_port)
    _run_background("items-relay", lambda settings, shutdown: run_relay(settings, shutdown, burst=burst))


@app.command()
def audit(burst: Burst = False, health_port: HealthPort = None) -> None:
    """Insert change events from the durable JetStream consumer into ClickHouse in batches, acking after insert."""
    from orderly.items.audit import run_audit

    use_health_port(health_port)
    _run_background("items-audit", lambda settings, shutdown: run_audit(settings, shutdown, burst=burst))


def _run_background(process: str, work: Callable[[ItemsSettings, Shutdown], Awaitable[None]]) -> None:
    """Settings, logging and ``run_process`` (signals, bounded drain) around one background process's work."""
    from orderly.platform.lifecycle import run_process
    from orderly.platform.logging import configure_logging

    settings = ItemsSettings()
    configure_logging(settings.log, process=process)

    async def main(shutdown: Shutdown) -> None:
        await work(settings, shutdown)

    run_process(main)
