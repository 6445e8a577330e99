"""The one `orderly` command; each sub-command only parses its flags and calls into a service or the platform."""

from __future__ import annotations

import typer

from orderly.stack.cli import app as stack_app
from orderly.sums import cli as sums_cli

app = typer.Typer(help="orderly: reliable event-driven backend services.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(sums_cli.app, name="sums")


def main() -> None:
    app()
