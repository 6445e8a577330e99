"""A small process supervisor: what `orderly up` runs its processes under (no business logic, only command lines).

- A process that exits while nobody asked it to is restarted after a delay that starts at 0.5 s and doubles up to
  30 s; the delay (and the crash count) starts over once a run lasted 30 s. Every other process keeps running.
- A process that exits 5 times within 60 s is crash-looping: it is marked failed with a one-line reason and left
  stopped. The rest keep serving.
- Only a stop request (Ctrl-C, SIGTERM) stops everything: in reverse start order, one process at a time, each sent
  SIGTERM and given the drain deadline to exit, then sent SIGKILL once. One line per process.
- Each process runs in a process group of its own. When a process dies, whatever it left behind in its group (e.g. an
  HTTP worker) is killed before it is started again, so nothing old keeps holding its port.
- If the supervisor itself is killed with -9, the kernel sends each process SIGTERM (``PR_SET_PDEATHSIG``): they drain
  and exit rather than run on unsupervised.
- ``/status`` (JSON) and ``/metrics`` (Prometheus) on a loopback port tell what runs, in which state, restarted how
  often.

Why not a library: docs/architecture.md ("Why each dependency").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import httpx
import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orderly.platform.orphans import dying_with_this_process

PROBE_INTERVAL = 0.2
POLL_INTERVAL = 0.05
LEFTOVER_DEADLINE = 2.0  # SIGKILLed leftovers of a dead process normally vanish within milliseconds


class State(enum.StrEnum):
    STARTING = "starting"  # spawned; its probe port (if any) does not answer /healthz yet
    RUNNING = "running"
    BACKOFF = "backoff"  # exited unexpectedly, waiting to be started again
    FAILED = "failed"  # crash-looped; left stopped
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Program:
    """One long-running process: its name, its command line, its environment and the port of its /healthz."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None  # None: inherit this process's environment
    probe_port: int | None = None


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 30.0  # a run at least this long starts the delays and the crash count over
    crash_limit: int = 5  # this many exits ...
    crash_window: float = 60.0  # ... within this many seconds is a crash loop


@dataclass(frozen=True)
class Restart:
    delay: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass
class RestartHistory:
    """One process's exits, and what the policy says to do after the next one (times come from the caller's clock)."""

    policy: RestartPolicy
    next_delay: float = field(init=False)
    exits: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.next_delay = self.policy.first_delay

    def exited(self, *, started_at: float, now: float) -> Restart | GiveUp:
        policy = self.policy
        if now - started_at >= policy.stable_after:  # it can run: start the delays and the crash count over
            self.next_delay = policy.first_delay
            self.exits.clear()
        self.exits.append(now)
        while now - self.exits[0] > policy.crash_window:
            self.exits.popleft()
        if len(self.exits) >= policy.crash_limit:
            return GiveUp(f"crash loop: exited {len(self.exits)} times within {policy.crash_window:.0f} s")
        delay = self.next_delay
        self.next_delay = min(delay * 2, policy.max_delay)
        return Restart(delay)


@dataclass(frozen=True)
class ProcessStatus:
    """What ``/status`` says about one process."""

    name: str
    state: State
    pid: int | None
    restarts: int
    started_at: str | None  # ISO 8601, UTC, of the current run
    probe_port: int | None
    reason: str | None = None  # why it failed

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "probe_port": self.probe_port,
            "reason": self.reason,
        }


class Output(Protocol):
    """Where the supervisor's stream goes."""

    def line(self, name: str, text: str) -> None:
        """One line a process printed."""

    def note(self, text: str) -> None:
        """One line of the supervisor's own (a restart, a failure, a stop)."""


class _Run(asyncio.SubprocessProtocol):
    """One run of a process: its output goes to the stream line by line; ``exited`` is set when it exits.

    asyncio's ``Process.wait()`` also waits for the output pipe to close, which a leftover (an orphaned worker that
    inherited the pipe) can hold open forever; ``process_exited`` fires when the process itself is gone.
    """

    def __init__(self, name: str, output: Output) -> None:
        self.name = name
        self.output = output
        self.transport: asyncio.SubprocessTransport | None = None
        self.exited = asyncio.Event()
        self._pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:  # noqa: ARG002 - asyncio's signature
        raw = data.encode() if isinstance(data, str) else data
        *lines, self._pending = (self._pending + raw).split(b"\n")
        for line in lines:
            self.output.line(self.name, line.decode("utf-8", "replace"))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:  # noqa: ARG002 - asyncio's signature
        if self._pending:
            self.output.line(self.name, self._pending.decode("utf-8", "replace"))
            self._pending = b""

    def process_exited(self) -> None:
        self.exited.set()

    @property
    def pid(self) -> int:
        assert self.transport is not None
        return self.transport.get_pid()

    @property
    def returncode(self) -> int | None:
        assert self.transport is not None
        return self.transport.get_returncode()

    def close(self) -> None:
        """Close the output pipe (the process has exited; a leftover still holding the pipe loses its audience)."""
        if self.transport is not None:
            self.transport.close()


@dataclass
class _Child:
    program: Program
    history: RestartHistory
    status: ProcessStatus
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    run: _Run | None = None
    started_mono: float = 0.0
    probe: asyncio.Task[None] | None = None


class Supervisor:
    """Keeps a list of programs running until asked to stop; see the module docstring for the rules."""

    def __init__(
        self,
        programs: Sequence[Program],
        *,
        output: Output,
        policy: RestartPolicy | None = None,
        drain_seconds: float = 12.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [p.name for p in programs]
        if len(set(names)) != len(names):
            raise ValueError(f"program names must be unique: {names}")
        self.output = output
        self.drain_seconds = drain_seconds
        self.clock = clock
        policy = policy or RestartPolicy()
        self._children = [
            _Child(
                program=p,
                history=RestartHistory(policy),
                status=ProcessStatus(p.name, State.STOPPED, None, 0, None, p.probe_port),
            )
            for p in programs
        ]
        self._published: tuple[ProcessStatus, ...] = tuple(c.status for c in self._children)
        self._stop = asyncio.Event()
        self._die_with_us = dying_with_this_process(signal.SIGTERM)

    def status(self) -> tuple[ProcessStatus, ...]:
        """The current state of every process, in start order (safe to call from any thread)."""
        return self._published

    async def run(self, stop: asyncio.Event) -> None:
        """Start every program, keep each running until ``stop`` is set, then stop them all in reverse order."""
        self._stop = stop
        async with httpx.AsyncClient(timeout=1.0) as probe, asyncio.TaskGroup() as tasks:
            for child in self._children:
                tasks.create_task(self._keep_running(child, probe))
            await stop.wait()
            self.output.note(f"stopping {len(self._children)} processes in reverse order, each drained")
            for child in reversed(self._children):
                await self._stop_one(child)

    def _set(self, child: _Child, **changes: Any) -> None:
        child.status = replace(child.status, **changes)
        self._published = tuple(c.status for c in self._children)

    async def _keep_running(self, child: _Child, probe: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            async with child.lock:
                if self._stop.is_set():
                    return
                run = await self._spawn(child, probe)
            if run is not None:
                await run.exited.wait()
            if self._stop.is_set():
                return
            leftovers = await _kill_leftovers(run.pid) if run is not None else 0
            if run is not None:
                run.close()
            ran = self.clock() - child.started_mono
            decision = child.history.exited(started_at=child.started_mono, now=self.clock())
            left = f", killed {leftovers} leftover process{'es' if leftovers != 1 else ''}" if leftovers else ""
            code = run.returncode if run is not None else None
            what = f"{child.program.name} {describe_exit(code)} after {ran:.1f} s{left}"
            if isinstance(decision, GiveUp):
                self._set(child, state=State.FAILED, pid=None, reason=decision.reason)
                self.output.note(f"{what}; FAILED ({decision.reason}), left stopped; the others keep running")
                return
            self._set(child, state=State.BACKOFF, pid=None)
            self.output.note(f"{what}; restart #{child.status.restarts + 1} in {decision.delay:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), decision.delay)
            if not self._stop.is_set():
                self._set(child, restarts=child.status.restarts + 1)

    async def _spawn(self, child: _Child, probe: httpx.AsyncClient) -> _Run | None:
        program = child.program
        child.started_mono = self.clock()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        loop = asyncio.get_running_loop()
        try:
            _, run = await loop.subprocess_exec(
                lambda: _Run(program.name, self.output),
                *program.argv,
                env=None if program.env is None else dict(program.env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals and leftovers are handled per process
                preexec_fn=self._die_with_us,  # if this supervisor is killed with -9, its processes still drain
            )
        except OSError as error:
            child.run = None
            self.output.note(f"{program.name} could not start: {error}")
            return None
        child.run = run
        self._set(child, state=State.STARTING, pid=run.pid, started_at=started_at, reason=None)
        if program.probe_port is None:
            self._set(child, state=State.RUNNING)
        else:
            child.probe = asyncio.create_task(self._probe(child, run, probe, program.probe_port))
        return run

    async def _probe(self, child: _Child, run: _Run, probe: httpx.AsyncClient, port: int) -> None:
        """starting -> running once the process answers GET /healthz with 200."""
        url = f"http://127.0.0.1:{port}/healthz"
        while not run.exited.is_set() and child.run is run and child.status.state is State.STARTING:
            with contextlib.suppress(httpx.HTTPError):
                if (await probe.get(url)).status_code == 200:
                    if child.run is run and child.status.state is State.STARTING:
                        self._set(child, state=State.RUNNING)
                    return
            await asyncio.sleep(PROBE_INTERVAL)

    async def _stop_one(self, child: _Child) -> None:
        async with child.lock:
            run = child.run
            name = child.program.name
            if child.probe is not None:
                child.probe.cancel()
            if run is None or run.exited.is_set():
                if run is not None:
                    run.close()
                if child.status.state is not State.FAILED:
                    self._set(child, state=State.STOPPED, pid=None)
                return
            self._set(child, state=State.STOPPING)
            began = self.clock()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGTERM)
            drained = await _wait_group(run, deadline=began + self.drain_seconds, clock=self.clock)
            if not drained:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.pid, signal.SIGKILL)
                await run.exited.wait()
            run.close()
            took = self.clock() - began
            self._set(child, state=State.STOPPED, pid=None)
            if drained:
                self.output.note(f"stopped {name} (pid {run.pid}) in {took:.1f} s, {describe_exit(run.returncode)}")
            else:
                self.output.note(f"killed {name} (pid {run.pid}): still running {self.drain_seconds:g} s after SIGTERM")


def describe_exit(code: int | None) -> str:
    if code is None:
        return "could not start"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


def group_members(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    members = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process)
    return members


async def _kill_leftovers(pgid: int) -> int:
    """SIGKILL whatever a dead process left in its group; returns how many there were."""
    leftovers = await asyncio.to_thread(group_members, pgid)
    if not leftovers:
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + LEFTOVER_DEADLINE
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(group_members, pgid):
            break
        await asyncio.sleep(POLL_INTERVAL)
    return len(leftovers)


async def _wait_group(run: _Run, *, deadline: float, clock: Callable[[], float]) -> bool:
    """Wait until a process and everything in its group exited; False when the deadline passed first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run.exited.wait(), max(deadline - clock(), 0))
    if not run.exited.is_set():
        return False
    while await asyncio.to_thread(group_members, run.pid):
        if clock() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL)
    return True


class _StatusCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        restarts = CounterMetricFamily(
            "orderly_process_restarts", "Times the supervisor restarted a process", labels=["process"]
        )
        up = GaugeMetricFamily("orderly_process_up", "1 while a process is running (and healthy)", labels=["process"])
        for process in self.supervisor.status():
            restarts.add_metric([process.name], process.restarts)
            up.add_metric([process.name], 1 if process.state is State.RUNNING else 0)
        return [restarts, up]


class StatusServer:
    """``GET /status`` (JSON) and ``GET /metrics`` (Prometheus text) about a supervisor, on a loopback port."""

    def __init__(self, supervisor: Supervisor, *, port: int, host: str = "127.0.0.1") -> None:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_StatusCollector(supervisor))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/status":
                    body = json.dumps({"processes": [p.as_json() for p in supervisor.status()]}).encode()
                    self._answer(200, "application/json", body)
                elif path == "/metrics":
                    self._answer(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                else:
                    self._answer(404, "application/json", b'{"error": "not_found", "message": "try /status"}')

            def _answer(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Requests are not logged: the stream is for the processes."""

        self.server = ThreadingHTTPServer((host, port), Handler)  # binds now: a taken port fails before anything runs
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="status-server", daemon=True)

    def __enter__(self) -> StatusServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def supervise(supervisor: Supervisor) -> None:
    """Run a supervisor until SIGINT or SIGTERM (a second one while stopping changes nothing)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await supervisor.run(stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
