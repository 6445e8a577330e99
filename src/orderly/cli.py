"""The one `orderly` command; each sub-command only parses its flags and calls into a service or the platform."""

from __future__ import annotations

import typer

from orderly.items import cli as items_cli
from orderly.stack.cli import app as stack_app

app = typer.Typer(help="orderly: reliable event-driven backend services.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(items_cli.app, name="items")


def main() -> None:
    app()
