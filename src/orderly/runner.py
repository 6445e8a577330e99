"""`orderly up`: the local stack plus every process of every service, supervised, in one prefixed, coloured stream.

Init steps (migrations, topics) run first, one after another, and must succeed. The long-running processes then run
under the supervisor (``platform/supervisor.py``): a process that dies is restarted with backoff while the others keep
running, a crash-looping one is marked failed, and only Ctrl-C or SIGTERM stops everything, in reverse start order,
each process drained. Finally the servers this command started (not those it found running) are stopped too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

import httpx
from honcho.colour import get_colours
from honcho.printer import Message, Printer
from rich.console import Console
from rich.table import Table

from orderly.platform.processes import SUPERVISOR_PORT, ProcessSpec, port_offset, with_port_offset
from orderly.platform.settings import InfraSettings
from orderly.platform.supervisor import Program, StatusServer, Supervisor, supervise
from orderly.stack.base import StackError
from orderly.stack.manager import Stack

DRAIN_SECONDS = 12.0  # a process gets this long after SIGTERM before SIGKILL (services promise 10 s)
READY_TIMEOUT = 90.0
SYSTEM = "system"  # the name the supervisor's own lines carry in the stream

console = Console(highlight=False)


def all_processes() -> list[ProcessSpec]:
    """Every service's processes, in start order (each service module lists its own), on their usual ports."""
    specs: list[ProcessSpec] = []
    for provider in _providers():
        specs.extend(provider())
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"process names must be unique: {names}")
    return specs


def service_processes() -> list[ProcessSpec]:
    """The long-running processes `orderly up` runs, every port moved by ``ORDERLY_UP__PORT_OFFSET``."""
    offset = port_offset()
    return [with_port_offset(spec, offset) for spec in all_processes() if not spec.init]


def supervisor_port() -> int:
    """Where `orderly up` answers /status and /metrics."""
    return SUPERVISOR_PORT + port_offset()


def _providers() -> list[Callable[[], list[ProcessSpec]]]:
    from orderly.ingest import processes as ingest
    from orderly.items import processes as items
    from orderly.loms import processes as loms
    from orderly.sums import processes as sums

    return [ingest.processes, sums.processes, items.processes, loms.processes]


def command_line(spec: ProcessSpec) -> list[str]:
    return [sys.executable, "-m", "orderly", *spec.args]


def output_dir(stack: Stack) -> Path:
    """Where `orderly up` keeps a copy of each process's output: ``.stack/run/<process>.log``."""
    return stack.root / "run"


class TeePrinter(Printer):  # type: ignore[misc]
    """honcho's coloured, prefixed terminal stream, plus each process's lines appended to a file of its own."""

    def __init__(self, folder: Path, *, width: int = 0) -> None:
        super().__init__(sys.stdout, width=width)
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, TextIO] = {}

    def write(self, message: Message) -> None:
        super().write(message)
        if message.type != "line" or message.name == SYSTEM:
            return
        file = self.files.get(message.name)
        if file is None:
            file = self.files[message.name] = (self.folder / f"{message.name}.log").open("a", encoding="utf-8")
        data = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) else message.data
        file.write(data)
        file.flush()

    def close(self) -> None:
        for file in self.files.values():
            file.close()
        self.files.clear()


class Stream:
    """The supervisor's output as honcho prints it: a time, the process's name in its colour, the line."""

    def __init__(self, printer: Printer, names: Sequence[str]) -> None:
        self.printer = printer
        self.colours = dict(zip(names, get_colours(), strict=False))

    def line(self, name: str, text: str) -> None:
        self.printer.write(Message("line", text + "\n", datetime.now(), name, self.colours.get(name)))

    def note(self, text: str) -> None:
        self.printer.write(Message("line", text + "\n", datetime.now(), SYSTEM, None))


def programs(specs: Sequence[ProcessSpec]) -> list[Program]:
    return [Program(spec.name, tuple(command_line(spec)), _env(spec), spec.probe_port) for spec in specs]


def endpoints_table(specs: Sequence[ProcessSpec], infra: InfraSettings, *, supervisor_port: int | None = None) -> Table:
    table = Table(title="what runs where", title_justify="left")
    table.add_column("what")
    table.add_column("where")
    if supervisor_port is not None:
        table.add_row("supervisor", f"http://127.0.0.1:{supervisor_port}/status (and /metrics)")
    for spec in specs:
        if spec.http_port:
            table.add_row(spec.name, f"http://127.0.0.1:{spec.http_port}/docs")
    table.add_row("RabbitMQ management", f"http://127.0.0.1:{infra.rabbitmq.management_port} (guest/guest)")
    table.add_row("NATS monitoring", f"http://127.0.0.1:{infra.nats.monitor_port}")
    table.add_row("ClickHouse HTTP", f"http://127.0.0.1:{infra.clickhouse.http_port}")
    table.add_row("Kafka", f"{infra.kafka.bootstrap_servers} (`orderly kafka status`)")
    table.add_row("PostgreSQL", infra.postgres.dsn())
    table.add_row("MariaDB", f"mysql://{infra.mysql.user}@{infra.mysql.host}:{infra.mysql.port}")
    table.add_row("Redis", infra.redis.url())
    return table


def http_ready(port: int) -> bool:
    """Whether the process on a loopback port answers GET /readyz with 200."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    return False


def wait_http_ready(port: int, *, timeout: float) -> bool:
    """Poll one port's /readyz until it answers 200; False when the timeout passes first."""
    deadline = time.monotonic() + timeout
    while not http_ready(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def wait_ready(specs: Sequence[ProcessSpec], *, timeout: float = READY_TIMEOUT) -> list[str]:
    """Wait for each HTTP process's /readyz; returns the names that did not get ready in time."""
    pending = {spec.name: spec.http_port for spec in specs if spec.http_port}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = {name: port for name, port in pending.items() if not http_ready(port)}
        if pending:
            time.sleep(0.3)
    return list(pending)


def run_init_steps(specs: Sequence[ProcessSpec]) -> None:
    for spec in specs:
        console.print(f"[bold]init[/] {spec.name}: orderly {' '.join(spec.args)}")
        done = subprocess.run(command_line(spec), env=_env(spec), check=False)
        if done.returncode != 0:
            raise StackError(spec.name, f"init step exited with {done.returncode}", "read its output above")


def _env(spec: ProcessSpec) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}


def init() -> None:
    """Every service's init step (migrations, topics), in order: what compose's init service runs."""
    run_init_steps([spec for spec in all_processes() if spec.init])


def up(*, stop_stack_on_exit: bool = True, extra: Sequence[Program] = ()) -> int:
    """Run everything until Ctrl-C or SIGTERM; returns the exit code.

    Every service's long-running processes run, moved by ``ORDERLY_UP__PORT_OFFSET``; ``extra`` programs run beside
    them under the same supervisor (tests add one that crash-loops).
    """
    services = service_processes()
    supervised = [*programs(services), *extra]
    names = [program.name for program in supervised]
    printer = TeePrinter(output_dir(Stack()), width=max([len(SYSTEM), *map(len, names)]))
    supervisor = Supervisor(supervised, output=Stream(printer, names), drain_seconds=DRAIN_SECONDS)
    port = supervisor_port()
    try:
        status = StatusServer(supervisor, port=port)  # before anything starts: a second `orderly up` stops here
    except OSError as error:
        raise StackError(
            "orderly up",
            f"the supervisor port 127.0.0.1:{port} is taken ({error.strerror})",
            "stop the other `orderly up`, or run this one with ORDERLY_UP__PORT_OFFSET=<n>",
        ) from None
    with status, contextlib.closing(printer):
        return _run(supervisor, services, stop_stack_on_exit=stop_stack_on_exit, port=port)


def _run(supervisor: Supervisor, services: list[ProcessSpec], *, stop_stack_on_exit: bool, port: int) -> int:
    stack = Stack()
    infra = stack.settings
    results = stack.up()
    started = [name for name, what, _ in results if what == "started"]
    fresh = f"started now: {', '.join(started)}" if started else "all were already running"
    console.print(f"local stack: {len(results)} servers ready ({fresh})")
    try:
        run_init_steps([s for s in all_processes() if s.init])
        if not services:
            console.print(endpoints_table(services, infra))
            console.print("no service processes yet; Ctrl-C stops the stack")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            return 0

        def announce() -> None:
            late = wait_ready(services)
            console.print(endpoints_table(services, infra, supervisor_port=port))
            if late:
                console.print(f"[red]not ready after {READY_TIMEOUT:.0f} s:[/] {', '.join(late)}")
            else:
                console.print("everything is ready; Ctrl-C stops it all")

        threading.Thread(target=announce, daemon=True).start()
        asyncio.run(supervise(supervisor))
        return 0
    finally:
        if stop_stack_on_exit and started:
            console.print(f"stopping the servers this command started: {', '.join(started)}")
            stack.down(started)
