"""The supervisor on small real processes (``python -c``, no servers): restarts without touching siblings, gives up
on a crash loop, kills what a dead process left behind, stops in reverse order with one line per process, and
reports it all on /status and /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from orderly.platform.supervisor import (
    ProcessStatus,
    Program,
    RestartPolicy,
    State,
    StatusServer,
    Supervisor,
    group_members,
)
from tests.plumbing import free_port

DRAINS = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); print('up', flush=True); "
SERVES = DRAINS + "time.sleep(600)"
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
)
CRASHES = "import sys; print('boom', flush=True); sys.exit(3)"
LEAVES_A_CHILD = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print('child', child.pid, flush=True); time.sleep(600)"
)
FAST = RestartPolicy(first_delay=0.05, max_delay=0.4, stable_after=30, crash_limit=5, crash_window=60)


def program(name: str, code: str) -> Program:
    return Program(name, (sys.executable, "-c", code))


@dataclass
class Recorded:
    lines: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self, name: str, text: str) -> None:
        self.lines.append((name, text))

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass
class Running:
    supervisor: Supervisor
    output: Recorded
    stop: asyncio.Event
    task: asyncio.Task[None]

    def of(self, name: str) -> ProcessStatus:
        [status] = [s for s in self.supervisor.status() if s.name == name]
        return status

    async def until(self, what: str, condition: Callable[[], bool], within: float = 10) -> None:
        deadline = time.monotonic() + within
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.supervisor.status()}"
            assert not self.task.done(), "the supervisor ended"
            await asyncio.sleep(0.02)

    async def stopped(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@asynccontextmanager
async def supervising(*programs: Program, drain_seconds: float = 5) -> AsyncIterator[Running]:
    output = Recorded()
    supervisor = Supervisor(list(programs), output=output, policy=FAST, drain_seconds=drain_seconds)
    stop = asyncio.Event()
    running = Running(supervisor, output, stop, asyncio.create_task(supervisor.run(stop)))
    try:
        yield running
    finally:
        if not running.task.done():
            await running.stopped()


def running(run: Running, name: str) -> Callable[[], bool]:
    return lambda: run.of(name).state is State.RUNNING and any(n == name and t == "up" for n, t in run.output.lines)


async def test_a_killed_process_is_restarted_once_and_its_sibling_keeps_its_pid() -> None:
    async with supervising(program("a", SERVES), program("b", SERVES)) as run:
        await run.until("both up", lambda: running(run, "a")() and running(run, "b")())
        a_pid, b_pid = run.of("a").pid, run.of("b").pid
        assert a_pid is not None

        os.kill(a_pid, signal.SIGKILL)
        await run.until("a restarted", lambda: run.of("a").restarts == 1 and run.of("a").state is State.RUNNING)

        assert run.of("a").pid not in (None, a_pid)
        assert run.of("b").pid == b_pid
        assert run.of("b").restarts == 0
        [restart] = [n for n in run.output.notes if n.startswith("a ")]
        assert "killed by SIGKILL" in restart
        assert "restart #1 in 0.05 s" in restart


async def test_a_crash_looping_process_is_failed_with_a_reason_and_the_rest_keep_running() -> None:
    async with supervising(program("steady", SERVES), program("crasher", CRASHES)) as run:
        await run.until("steady up", running(run, "steady"))
        steady_pid = run.of("steady").pid
        await run.until("crasher failed", lambda: run.of("crasher").state is State.FAILED, within=30)

        crasher = run.of("crasher")
        assert crasher.restarts == 4
        assert crasher.pid is None
        assert crasher.reason == "crash loop: exited 5 times within 60 s"
        assert run.of("steady").state is State.RUNNING
        failed = [n for n in run.output.notes if "FAILED" in n]
        assert len(failed) == 1
        assert failed[0].startswith("crasher exited with code 3")
        assert [t for n, t in run.output.lines if n == "crasher"] == ["boom"] * 5
        assert run.of("steady").pid == steady_pid


async def test_what_a_dead_process_left_in_its_group_is_killed_before_it_starts_again() -> None:
    async with supervising(program("parent", LEAVES_A_CHILD)) as run:
        await run.until("the child", lambda: any(n == "parent" for n, _ in run.output.lines))
        [(_, announced)] = [(n, t) for n, t in run.output.lines if n == "parent"]
        child = psutil.Process(int(announced.split()[1]))
        parent_pid = run.of("parent").pid
        assert parent_pid is not None

        os.kill(parent_pid, signal.SIGKILL)
        await run.until("restarted", lambda: run.of("parent").restarts == 1)

        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert "killed 1 leftover process" in run.output.notes[0]


async def test_stop_goes_in_reverse_order_one_line_each_and_sigkill_only_once_for_a_process_that_ignores_sigterm() -> (
    None
):
    programs = [program("first", SERVES), program("stubborn", IGNORES_SIGTERM), program("last", SERVES)]
    async with supervising(*programs, drain_seconds=1) as run:
        await run.until("all up", lambda: all(running(run, p.name)() for p in programs))
        pids = {p.name: run.of(p.name).pid for p in programs}
        await run.stopped()

    stops = [n for n in run.output.notes if not n.startswith("stopping ")]
    assert [s.split()[1] for s in stops] == ["last", "stubborn", "first"]
    assert stops[0].startswith(f"stopped last (pid {pids['last']}) in ")
    assert stops[0].endswith("exited with code 0")
    assert stops[1] == f"killed stubborn (pid {pids['stubborn']}): still running 1 s after SIGTERM"
    assert stops[2].endswith("exited with code 0")
    assert sum("SIGKILL" in n or n.startswith("killed") for n in run.output.notes) == 1
    assert all(s.state is State.STOPPED and s.pid is None for s in run.supervisor.status())
    for pid in pids.values():
        assert pid is not None
        assert not group_members(pid)


async def test_status_and_metrics_report_state_pid_and_restarts_per_process() -> None:
    async with supervising(program("a", SERVES), program("crasher", CRASHES)) as run:
        port = free_port()
        with StatusServer(run.supervisor, port=port):
            await run.until("crasher failed", lambda: run.of("crasher").state is State.FAILED, within=30)
            await run.until("a up", running(run, "a"))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                status = (await http.get("/status")).json()
                metrics = (await http.get("/metrics")).text
                missing = await http.get("/nothing")

    by_name = {p["name"]: p for p in status["processes"]}
    assert list(by_name) == ["a", "crasher"]
    assert by_name["a"]["state"] == "running"
    assert by_name["a"]["pid"] == run.of("a").pid or run.of("a").state is State.STOPPED
    assert by_name["a"]["restarts"] == 0
    assert by_name["a"]["started_at"].endswith("+00:00")
    assert by_name["a"]["probe_port"] is None
    assert by_name["crasher"]["state"] == "failed"
    assert by_name["crasher"]["pid"] is None
    assert by_name["crasher"]["restarts"] == 4
    assert 'orderly_process_restarts_total{process="crasher"} 4.0' in metrics
    assert 'orderly_process_restarts_total{process="a"} 0.0' in metrics
    assert 'orderly_process_up{process="a"} 1.0' in metrics
    assert 'orderly_process_up{process="crasher"} 0.0' in metrics
    assert missing.status_code == 404


async def test_a_process_with_a_probe_port_is_starting_until_its_healthz_answers() -> None:
    port = free_port()
    serves_healthz = "\n".join(
        [
            "import http.server, signal, sys, time",
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))",
            "class Healthy(http.server.BaseHTTPRequestHandler):",
            "    def do_GET(self):",
            "        self.send_response(200)",
            "        self.end_headers()",
            "print('up', flush=True)",
            "time.sleep(0.5)",
            f"http.server.HTTPServer(('127.0.0.1', {port}), Healthy).serve_forever()",
        ]
    )
    async with supervising(Program("api", (sys.executable, "-c", serves_healthz), probe_port=port)) as run:
        await run.until("printed up", lambda: any(n == "api" for n, _ in run.output.lines))
        assert run.of("api").state is State.STARTING
        await run.until("running", lambda: run.of("api").state is State.RUNNING)


def test_a_taken_status_port_fails_before_anything_starts() -> None:
    supervisor = Supervisor([], output=Recorded())
    port = free_port()
    with StatusServer(supervisor, port=port), pytest.raises(OSError, match="Address already in use"):
        StatusServer(supervisor, port=port)


def test_processes_drain_on_their_own_when_the_supervisor_is_killed_with_minus_9(tmp_path: Path) -> None:
    marker = tmp_path / "drained"
    child = (
        "import os, pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(marker)!r}).write_text('yes'), sys.exit(0)))\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(600)\n"
    )
    supervisor = (
        "import asyncio, sys\n"
        "from orderly.platform.supervisor import Program, Supervisor\n"
        "class Out:\n"
        "    def line(self, name, text): print(text, flush=True)\n"
        "    def note(self, text): pass\n"
        "async def main():\n"
        "    child = Program('child', (sys.executable, '-c', sys.argv[1]))\n"
        "    await Supervisor([child], output=Out()).run(asyncio.Event())\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", supervisor, child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child_pid = int(proc.stdout.readline())
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(child_pid) and psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the process outlived its supervisor"
            time.sleep(0.02)
        assert marker.read_text() == "yes"
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
