"""`orderly ingest …`: api, worker, daemon, migrate. Flags become settings; the work happens in the modules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from orderly.ingest.settings import IngestSettings
from orderly.platform.flags import HealthPort, use_health_port
from orderly.platform.settings import with_flags

app = typer.Typer(
    help="Numbers over HTTP → RabbitMQ → one worker → PostgreSQL → daemon, in order.", no_args_is_help=True
)


def _settings(**ingest: object) -> IngestSettings:
    return with_flags(IngestSettings(), "ingest", **ingest)


@app.command()
def migrate() -> None:
    """Create the database when missing and apply the ingest migrations (idempotent)."""
    from orderly.ingest import repository
    from orderly.platform.lifecycle import run_oneshot
    from orderly.platform.logging import configure_logging

    settings = IngestSettings()
    configure_logging(settings.log, process="ingest-migrate")
    applied = run_oneshot(lambda: asyncio.run(repository.migrate(settings.postgres)))
    typer.echo(f"ingest migrations applied: {applied or 'none pending'}", err=True)


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8101).")] = None,
    workers: Annotated[int | None, typer.Option(help="HTTP worker processes.")] = None,
) -> None:
    """Serve GET /ingest: 202 once the request is durably queued."""
    from orderly.platform.http import export_to_environment, serve

    export_to_environment("ORDERLY_HTTP__", {"port": port, "workers": workers})
    settings = IngestSettings()
    serve("orderly.ingest.app:create_app", settings.http, process_name="orderly-ingest-api")


@app.command()
def worker(
    batch_size: Annotated[int | None, typer.Option(help="Requests per transaction (1 = the seed's design).")] = None,
    max_wait_ms: Annotated[int | None, typer.Option(help="Longest wait to fill a batch.")] = None,
    skip_poison: Annotated[bool, typer.Option("--skip-poison", help="Dead-letter a poison message.")] = False,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queue is empty.")] = False,
    health_port: HealthPort = None,
) -> None:
    """Consume the queue as its single active consumer and store batches in delivery order."""
    from orderly.ingest.domain import PoisonMessageError
    from orderly.ingest.worker import run_worker
    from orderly.platform.lifecycle import Shutdown, run_process
    from orderly.platform.logging import configure_logging

    use_health_port(health_port)
    settings = _settings(
        batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        skip_poison=skip_poison or None,
        burst=burst or None,
    )
    configure_logging(settings.log, process="ingest-worker")

    async def main(shutdown: Shutdown) -> None:
        await run_worker(settings, shutdown)

    try:
        run_process(main)
    except PoisonMessageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None


@app.command()
def daemon(
    log_file: Annotated[Path | None, typer.Option(help="Also write event lines to this size-rotated file.")] = None,
    name: Annotated[str | None, typer.Option(help="Cursor name (one cursor per independent reader).")] = None,
    health_port: HealthPort = None,
) -> None:
    """Print every event as one JSON line on stdout, in event_id order, resuming from the persisted cursor."""
    from orderly.ingest.daemon import run_daemon
    from orderly.platform.lifecycle import Shutdown, run_process
    from orderly.platform.logging import configure_logging

    use_health_port(health_port)
    settings = _settings(log_file=log_file, daemon_name=name)
    configure_logging(settings.log, process="ingest-daemon")

    async def main(shutdown: Shutdown) -> None:
        await run_daemon(settings, shutdown)

    run_process(main)


@app.command()
def send(
    numbers: Annotated[list[int], typer.Argument(help="The integers of one request (put -- before negatives).")],
    stomp: Annotated[bool, typer.Option("--stomp", help="SEND over STOMP instead of GET /ingest.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the 202 or the RECEIPT.", min=0.1)] = 10.0,
) -> None:
    """Send one request and print its token once it is accepted (202 over HTTP, RECEIPT over STOMP)."""
    from orderly.ingest.client import NotAcceptedError, send_http, send_stomp

    settings = IngestSettings()
    try:
        token = (send_stomp if stomp else send_http)(settings, numbers, timeout=timeout)
    except NotAcceptedError as exc:
        typer.echo(f"not accepted: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(token))
