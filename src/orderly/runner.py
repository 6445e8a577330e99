"""`orderly up`: the local stack plus every process of every service, in one prefixed, coloured log stream.

Init steps (migrations, topics) run first, one after another, and must succeed. The long-running processes then run
under honcho's process manager; when one dies or Ctrl-C arrives, they are stopped in reverse start order, each given
time to drain, and finally the servers this command started (not those it found running) are stopped too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import httpx
import psutil
from honcho.manager import Manager
from honcho.printer import Message, Printer
from rich.console import Console
from rich.table import Table

from orderly.platform.processes import ProcessSpec
from orderly.platform.settings import InfraSettings
from orderly.stack.base import StackError
from orderly.stack.manager import Stack

DRAIN_SECONDS = 12.0  # a process gets this long after SIGTERM before SIGKILL (services promise 10 s)
READY_TIMEOUT = 90.0

console = Console(highlight=False)


def all_processes() -> list[ProcessSpec]:
    """Every service's processes, in start order (each service module lists its own)."""
    specs: list[ProcessSpec] = []
    for provider in _providers():
        specs.extend(provider())
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"process names must be unique: {names}")
    return specs


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

    def __init__(self, folder: Path) -> None:
        super().__init__(sys.stdout)
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, TextIO] = {}

    def write(self, message: Message) -> None:
        super().write(message)
        if message.type != "line" or message.name == "system":
            return
        file = self.files.get(message.name)
        if file is None:
            file = self.files[message.name] = (self.folder / f"{message.name}.log").open("a", encoding="utf-8")
        data = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) else message.data
        file.write(data)
        file.flush()


class OrderedManager(Manager):  # type: ignore[misc]
    """honcho's manager, but stopping gracefully in reverse start order, each process drained before the next."""

    def _killall(self, force: bool = False) -> None:
        if force:
            super()._killall(force=True)
            return
        for name in reversed(list(self._processes)):
            entry = self._processes[name]
            pid = entry.get("pid")
            if pid is None or "returncode" in entry:
                continue
            self._system_print(f"stopping {name} (pid {pid})\n")
            if not stop_group(pid, DRAIN_SECONDS):
                self._system_print(f"{name} did not stop within {DRAIN_SECONDS:.0f} s, killed it\n")


def stop_group(pid: int, drain_seconds: float) -> bool:
    """SIGTERM a process group (honcho starts each process in its own), SIGKILL it after the drain deadline.

    Returns whether everything in the group exited within the deadline. Zombies count as exited: their parent, a
    honcho worker, reaps them.
    """
    try:
        members = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        os.killpg(pid, signal.SIGTERM)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return True

    def running() -> list[psutil.Process]:
        alive = []
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                if member.status() != psutil.STATUS_ZOMBIE:
                    alive.append(member)
        return alive

    deadline = time.monotonic() + drain_seconds
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not running():
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return False


def endpoints_table(specs: Sequence[ProcessSpec], infra: InfraSettings) -> Table:
    table = Table(title="what runs where", title_justify="left")
    table.add_column("what")
    table.add_column("where")
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


def up(*, stop_stack_on_exit: bool = True) -> int:
    """Run everything until Ctrl-C or until a process dies; returns the exit code."""
    stack = Stack()
    infra = stack.settings
    results = stack.up()
    started = [name for name, what, _ in results if what == "started"]
    fresh = f"started now: {', '.join(started)}" if started else "all were already running"
    console.print(f"local stack: {len(results)} servers ready ({fresh})")
    specs = all_processes()
    try:
        run_init_steps([s for s in specs if s.init])
        services = [s for s in specs if not s.init]
        if not services:
            console.print(endpoints_table(services, infra))
            console.print("no service processes yet; Ctrl-C stops the stack")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            return 0
        manager = OrderedManager(TeePrinter(output_dir(stack)))
        for spec in services:
            # `exec` replaces honcho's shell with the process itself, so signals reach it directly.
            manager.add_process(spec.name, "exec " + shlex.join(command_line(spec)), env=_env(spec))

        def announce() -> None:
            late = wait_ready(services)
            console.print(endpoints_table(services, infra))
            if late:
                console.print(f"[red]not ready after {READY_TIMEOUT:.0f} s:[/] {', '.join(late)}")
            else:
                console.print("everything is ready; Ctrl-C stops it all")

        threading.Thread(target=announce, daemon=True).start()
        manager.loop()
        return int(manager.returncode or 0)
    finally:
        if stop_stack_on_exit and started:
            console.print(f"stopping the servers this command started: {', '.join(started)}")
            stack.down(started)
