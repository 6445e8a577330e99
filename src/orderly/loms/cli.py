"""`orderly loms …`: parse flags (they win over env and file), then call into loms."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from orderly.platform.flags import HealthPort, use_health_port

app = typer.Typer(help="loms: orders, stock reservation, the outbox relay to Kafka.", no_args_is_help=True)


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8401)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    workers: Annotated[int | None, typer.Option(help="HTTP worker processes")] = None,
) -> None:
    """Serve the loms HTTP API."""
    from orderly.loms.settings import LomsSettings
    from orderly.platform.http import export_to_environment, serve

    export_to_environment("ORDERLY_HTTP__", {"port": port, "host": host, "workers": workers})
    serve("orderly.loms.app:create_app", LomsSettings().http, process_name="loms-api")


@app.command()
def relay(
    batch_size: Annotated[int | None, typer.Option(help="outbox rows per batch")] = None,
    burst: Annotated[bool, typer.Option(help="exit once the outbox is empty")] = False,
    health_port: HealthPort = None,
) -> None:
    """Publish outbox events to Kafka (one active relay; others stand by)."""
    from orderly.loms.relay import run_relay
    from orderly.loms.settings import loms_settings
    from orderly.platform.lifecycle import Shutdown, run_process
    from orderly.platform.logging import configure_logging

    use_health_port(health_port)
    settings = loms_settings(batch_size=batch_size)
    configure_logging(settings.log, process="loms-relay")

    async def main(shutdown: Shutdown) -> None:
        await run_relay(settings, shutdown, burst=burst)

    run_process(main)


@app.command()
def migrate() -> None:
    """Create the database when missing, apply migrations, seed the stock (idempotent)."""
    from orderly.loms.schema import migrate as run_migrate
    from orderly.loms.settings import LomsSettings
    from orderly.platform.lifecycle import run_oneshot
    from orderly.platform.logging import configure_logging

    settings = LomsSettings()
    configure_logging(settings.log, process="loms-migrate")
    run_oneshot(lambda: asyncio.run(run_migrate(settings.postgres)))


@app.command("init-topics")
def init_topics() -> None:
    """Create loms.order-events (2 partitions) and its DLQ; fail when they exist with another shape."""
    from orderly.loms.kafka_admin import TopicShapeMismatchError
    from orderly.loms.kafka_admin import init_topics as run_init
    from orderly.loms.settings import LomsSettings
    from orderly.platform.lifecycle import run_oneshot
    from orderly.platform.logging import configure_logging

    settings = LomsSettings()
    configure_logging(settings.log, process="loms-init-topics")
    try:
        created = run_oneshot(lambda: run_init(settings))
    except TopicShapeMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    for name in created:
        print(f"created {name}", file=sys.stderr)


@app.command()
def init() -> None:
    """The init step of `orderly up`: migrate, then init-topics."""
    migrate()
    init_topics()
