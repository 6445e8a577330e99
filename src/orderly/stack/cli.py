"""`orderly stack …`: the local servers, as plain processes under .stack/."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orderly.stack.base import StackError
from orderly.stack.manager import Stack

app = typer.Typer(help="Start, stop and inspect the local stack of eight real servers.", no_args_is_help=True)
console = Console(highlight=False)
Servers = Annotated[list[str] | None, typer.Argument(help="Server names (default: all).", show_default=False)]


def _fail(error: StackError) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error[/] {error.line()}", soft_wrap=True)
    return typer.Exit(1)


@app.command()
def up(servers: Servers = None) -> None:
    """Start the servers that are not running (idempotent), wait until each is ready, print the table."""
    stack = Stack()
    try:
        results = stack.up(servers)
    except StackError as error:
        raise _fail(error) from None
    for name, what, seconds in results:
        console.print(f"{name:<11} {what:<8} {seconds:5.1f} s")
    print_status(stack)


@app.command()
def down(servers: Servers = None) -> None:
    """Stop what the stack started (and nothing else)."""
    stopped = Stack().down(servers)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """Print server, version, port, pid and readiness; exit 1 unless every server is ready."""
    if not print_status(Stack()):
        raise typer.Exit(1)


@app.command()
def reset(yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    """Stop everything and wipe every server's data (the downloaded Kafka jars stay)."""
    stack = Stack()
    if not yes:
        typer.confirm(f"Wipe all data under {stack.root}?", abort=True)
    stack.reset()
    console.print(f"wiped {stack.root}")


@app.command()
def logs(
    servers: Servers = None,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Lines per log.")] = 40,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing as logs grow.")] = False,
) -> None:
    """Print the tail of each server's log."""
    paths = [str(s.log_path) for s in Stack().servers(servers) if s.log_path.exists()]
    if not paths:
        raise typer.Exit(0)
    args = ["tail", "-n", str(lines), *(["-F"] if follow else []), *paths]
    os.execvp("tail", args)  # noqa: S606 - hand the terminal to tail


def print_status(stack: Stack) -> bool:
    table = Table(title=f"local stack ({stack.root})", title_justify="left")
    for column in ("server", "version", "port", "pid", "ready"):
        table.add_column(column)
    rows = stack.status()
    for row in rows:
        ports = ", ".join(f"{port}" if i == 0 else f"{role} {port}" for i, (role, port) in enumerate(row.ports.items()))
        table.add_row(
            row.name,
            row.version,
            ports,
            str(row.pid or "-"),
            "[green]yes[/]" if row.ready else "[red]no[/]",
        )
    console.print(table)
    ready = sum(r.ready for r in rows)
    console.print(f"{ready}/{len(rows)} ready")
    return ready == len(rows)
