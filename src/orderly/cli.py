"""The one `orderly` command; each sub-command only parses its flags and calls into a service or the platform."""

from __future__ import annotations

import typer

from orderly.loms import cli as loms_cli
from orderly.loms import kafka_cli
from orderly.notifier import cli as notifier_cli
from orderly.stack.cli import app as stack_app

app = typer.Typer(help="orderly: reliable event-driven backend services.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(loms_cli.app, name="loms")
app.add_typer(notifier_cli.app, name="notifier")
app.add_typer(kafka_cli.app, name="kafka")


def main() -> None:
    app()
