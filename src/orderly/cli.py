"""The one `orderly` command; each sub-command only parses its flags and calls into a service or the platform."""

from __future__ import annotations

from typing import Annotated

import typer

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


@app.command("demo")
def demo_command() -> None:
    """Prove each headline promise against the running system (started when needed): PASS or FAIL with evidence."""
    from orderly.demo import demo

    raise typer.Exit(demo())


def main() -> None:
    app()
