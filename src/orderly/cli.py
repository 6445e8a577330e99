"""The one `orderly` command; each sub-command only parses its flags and calls into a service or the platform."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from orderly import dlq_cli
from orderly.ingest import cli as ingest_cli
from orderly.items import cli as items_cli
from orderly.loms import cli as loms_cli
from orderly.loms import kafka_cli
from orderly.notifier import cli as notifier_cli
from orderly.stack.base import StackError
from orderly.stack.cli import app as stack_app
from orderly.sums import cli as sums_cli

app = typer.Typer(help="orderly: reliable event-driven backend services.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(ingest_cli.app, name="ingest")
app.add_typer(sums_cli.app, name="sums")
app.add_typer(items_cli.app, name="items")
app.add_typer(loms_cli.app, name="loms")
app.add_typer(notifier_cli.app, name="notifier")
app.add_typer(kafka_cli.app, name="kafka")
app.add_typer(dlq_cli.app, name="dlq")


@app.command("up")
def up_command(
    keep_stack: Annotated[bool, typer.Option("--keep-stack", help="Leave the servers running on exit.")] = False,
) -> None:
    """Start the local stack and every service process; Ctrl-C drains and stops everything in reverse order."""
    from orderly.runner import up

    try:
        code = up(stop_stack_on_exit=not keep_stack)
    except StackError as error:
        typer.echo(f"error {error.line()}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command("init")
def init_command() -> None:
    """Run every service's init step (migrations, Kafka topics) against the configured servers."""
    from orderly.runner import init

    try:
        init()
    except StackError as error:
        typer.echo(f"error {error.line()}", err=True)
        raise typer.Exit(1) from None


@app.command("status")
def status_command(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh the screen live until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Every process (state, PID, uptime, restarts, health), every server, every pipeline's throughput and lag."""
    from orderly.status import show

    show(watch=watch, as_json=as_json, interval=interval)


@app.command("demo")
def demo_command() -> None:
    """Prove each headline promise against the running system (started when needed): PASS or FAIL with evidence."""
    from orderly.demo import demo

    raise typer.Exit(demo())


@app.command("drill")
def drill_command(
    *,
    pipelines: Annotated[
        str, typer.Option(help="Comma-separated pipelines to drill: ingest, sums, items, loms.")
    ] = "ingest,sums,items,loms",
    faults: Annotated[
        str, typer.Option(help="local: kill processes and restart servers on this machine; none: load and checks only.")
    ] = "local",
    clients: Annotated[int, typer.Option(min=1, max=64, help="Concurrent clients per pipeline.")] = 3,
    rate: Annotated[float, typer.Option(min=0.1, max=1000, help="Requests a second per client, at most.")] = 10.0,
    settle: Annotated[
        float,
        typer.Option(min=0, max=60, help="Seconds of load before the first fault, between faults, after the last."),
    ] = 2.0,
    duration: Annotated[float, typer.Option(min=1, max=3600, help="Seconds of load with --faults none.")] = 30.0,
    output: Annotated[
        Path | None,
        typer.Option(help="Folder with each process's output as <process>.log (default: where `orderly up` keeps it)."),
    ] = None,
) -> None:
    """Kill processes and restart servers under load, then check every promise: PASS or FAIL per pipeline."""
    from orderly.drill import PIPELINES, Options, drill

    chosen = [name.strip() for name in pipelines.split(",") if name.strip()]
    known = [p.name for p in PIPELINES]
    if not chosen or set(chosen) - set(known):
        raise typer.BadParameter(f"choose from {', '.join(known)}; got {pipelines!r}", param_hint="--pipelines")
    if faults not in ("local", "none"):
        raise typer.BadParameter(f"local or none; got {faults!r}", param_hint="--faults")
    options = Options(
        pipelines=chosen, faults=faults == "local", clients=clients, rate=rate, settle=settle, duration=duration
    )
    raise typer.Exit(drill(options, output=output))


def main() -> None:
    try:
        app()
    except ValidationError as exc:
        # A bad flag, variable or file entry: name each field and exit like any other usage error.
        for error in exc.errors(include_url=False):
            field = ".".join(str(part) for part in error["loc"])
            typer.echo(f"error: invalid setting {field}: {error['msg']}", err=True)
        raise SystemExit(2) from None
