"""Attach to the system `orderly up` runs, or start it for as long as a command needs it (`demo`, `drill`).

The system counts as running when every API answers ``/readyz`` with 200. When it does not, ``orderly up`` is started
as a child process (its output appended to ``.stack/run/up.log``) and stopped with Ctrl-C's signal afterwards, which
drains every process and stops the servers it started.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orderly.platform.processes import ProcessSpec
from orderly.runner import output_dir, service_processes, wait_ready
from orderly.stack.manager import Stack

START_TIMEOUT = 600.0  # a cold start on a busy machine: seven servers, four init steps, fifteen processes
STOP_TIMEOUT = 300.0  # every process drained in reverse order, then the servers it started


class SystemNotReadyError(Exception):
    """`orderly up` was started but its APIs did not answer /readyz in time."""


@dataclass(frozen=True)
class Attached:
    """The running system a command talks to."""

    stack: Stack
    specs: list[ProcessSpec]  # every long-running process, as `orderly up` runs it (ports moved by the offset)
    started: bool  # whether this command started `orderly up` (and so stops it again)

    @property
    def output(self) -> Path:
        """Where `orderly up` keeps a copy of each process's output (``<process>.log``)."""
        return output_dir(self.stack)


def is_running(specs: Sequence[ProcessSpec]) -> bool:
    return not wait_ready(specs, timeout=2)


@contextmanager
def attached(*, announce: Callable[[str], None] = print) -> Iterator[Attached]:
    """The running system; started with `orderly up` when no API answers, and stopped again on exit."""
    stack = Stack()
    specs = service_processes()
    if is_running(specs):
        yield Attached(stack, specs, started=False)
        return
    announce(f"the system is not running: starting `orderly up` (its output goes to {output_dir(stack) / 'up.log'})")
    output_dir(stack).mkdir(parents=True, exist_ok=True)
    with (output_dir(stack) / "up.log").open("ab") as log:
        runner = subprocess.Popen([sys.executable, "-m", "orderly", "up"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _await_start(runner, specs)
        yield Attached(stack, specs, started=True)
    finally:
        runner.send_signal(signal.SIGINT)
        try:
            runner.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            announce(f"`orderly up` (pid {runner.pid}) is still stopping after {STOP_TIMEOUT:.0f} s; see its up.log")


def _await_start(runner: subprocess.Popen[bytes], specs: Sequence[ProcessSpec]) -> None:
    """Until every API answers /readyz; fails as soon as `orderly up` exits, or at the start deadline."""
    deadline = time.monotonic() + START_TIMEOUT
    while late := wait_ready(specs, timeout=5):
        if runner.poll() is not None:
            raise SystemNotReadyError(
                f"`orderly up` exited with {runner.returncode} before {', '.join(late)} got ready"
            )
        if time.monotonic() > deadline:
            raise SystemNotReadyError(f"not ready after {START_TIMEOUT:.0f} s: {', '.join(late)}")


async def poll(check: Callable[[], Awaitable[bool]], *, within: float, every: float = 0.5) -> bool:
    """Whether ``check`` held before the deadline (checked once more at the end): how `demo` and `drill` wait for
    what the running system should have done."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return await check()
