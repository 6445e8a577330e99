"""`orderly up` keeps the system up: a process killed with -9 comes back while the others keep running, a
crash-looping process is given up on while the rest keep serving, an API's workers never outlive its main process,
and only Ctrl-C stops everything, in reverse order, drained, one line each.

One private system (its own stack copy and ports) serves the whole module; the Ctrl-C test stops it, so it is last.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator

import httpx
import psutil
import pytest

from orderly.platform.settings import InfraSettings
from orderly.platform.supervisor import Program
from tests.plumbing import RunningSystem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the first test also brings the system up

# A program that exits at once, added beside the services' processes: it crash-loops.
CRASH_LOOPER = Program("crash-looper", (sys.executable, "-c", "import sys; print('crashing', flush=True); sys.exit(3)"))
RESPAWNED_WITHIN = 1.5  # noticing the exit, killing leftovers, the first 0.5 s backoff
BACK_WITHIN = 5.0  # ... plus a cold start of the process until it answers /healthz
ORPHANS_GONE_WITHIN = 2.0


@pytest.fixture(scope="module")
def system(stack: InfraSettings) -> Iterator[RunningSystem]:
    running = RunningSystem(extra=[CRASH_LOOPER], name="supervision")
    try:
        running.wait_ready()
        yield running
    finally:
        running.remove()


def service_pids(system: RunningSystem) -> dict[str, int]:
    return {name: p["pid"] for name, p in system.status().items() if name not in system.extra}


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def allowance(seconds: float) -> float:
    """``seconds`` on a machine with a free core; stretched by the run queue per core when it is oversubscribed.

    A restarted process's cold start (imports, connections) is CPU work: under a load of 16 on 2 cores it takes
    several times longer, which says nothing about the supervisor.
    """
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def respawn(system: RunningSystem, name: str, old_pid: int) -> bool:
    return system.status()[name]["pid"] not in (None, old_pid)


def back(system: RunningSystem, name: str, old_pid: int) -> bool:
    process = system.status()[name]
    return process["state"] == "running" and process["pid"] not in (None, old_pid)


@pytest.mark.parametrize("name", ["items-api", "ingest-worker-1", "loms-relay", "notifier-2"])
def test_a_process_killed_with_minus_9_is_back_within_5_s_and_the_others_keep_their_pids(
    system: RunningSystem, name: str
) -> None:
    before = system.status()
    pids = service_pids(system)

    os.kill(pids[name], signal.SIGKILL)
    respawned = system.wait_until(f"{name} respawned", lambda: respawn(system, name, pids[name]), timeout=30)
    took = respawned + system.wait_until(f"{name} back", lambda: back(system, name, pids[name]), timeout=60)

    print(f"{name}: started again after {respawned:.2f} s, running after {took:.2f} s (load {os.getloadavg()[0]:.1f})")
    assert respawned < allowance(RESPAWNED_WITHIN), f"{name} was started again {respawned:.1f} s after the kill"
    assert took < allowance(BACK_WITHIN), f"{name} took {took:.1f} s to come back"
    after = system.status()
    assert after[name]["restarts"] == before[name]["restarts"] + 1
    others = {n: pid for n, pid in pids.items() if n != name}
    assert {n: after[n]["pid"] for n in others} == others
    assert all(after[n]["state"] == "running" for n in others)
    restarts = [line for line in system.lines if re.search(rf"\| {name} killed by SIGKILL after .*; restart #", line)]
    assert len(restarts) == after[name]["restarts"]


def test_killing_a_multi_worker_apis_main_process_with_minus_9_leaves_no_orphan(system: RunningSystem) -> None:
    name = "loms-api"
    entry = system.status()[name]
    main = psutil.Process(entry["pid"])
    workers = main.children(recursive=True)
    assert workers, "granian serves from worker processes under its main process"

    main.kill()
    gone = system.wait_until("the workers gone", lambda: not any(alive(w) for w in workers), timeout=30)
    print(f"{name}: its workers were gone {gone:.3f} s after kill -9 of its main process")
    assert gone < ORPHANS_GONE_WITHIN, f"the orphaned workers served on for {gone:.1f} s"

    system.wait_until(f"{name} back", lambda: back(system, name, entry["pid"]), timeout=30)
    restarted = psutil.Process(system.status()[name]["pid"])
    own = {restarted.pid, *(p.pid for p in restarted.children(recursive=True))}
    listeners = {
        c.pid for c in psutil.net_connections("tcp") if c.laddr.port == entry["probe_port"] and c.status == "LISTEN"
    }
    assert listeners
    assert listeners <= own, "only the restarted API listens on its port"


def test_a_crash_looping_process_is_failed_with_one_line_and_the_rest_keep_serving(system: RunningSystem) -> None:
    pids = service_pids(system)
    system.wait_until(
        "the crash loop detected", lambda: system.status()["crash-looper"]["state"] == "failed", timeout=90
    )

    status = system.status()
    looper = status["crash-looper"]
    assert looper["pid"] is None
    assert looper["restarts"] == 4
    assert looper["reason"] == "crash loop: exited 5 times within 60 s"
    failures = [line for line in system.lines if "crash-looper" in line and "FAILED" in line]
    print("\n".join(line for line in system.lines if "crash-looper" in line and "system" in line.split("|")[0]))
    assert len(failures) == 1
    assert all(p["state"] == "running" for name, p in status.items() if name != "crash-looper")
    assert service_pids(system) == pids
    items = system.status()["items-api"]["probe_port"]
    assert httpx.get(f"http://127.0.0.1:{items}/readyz", timeout=5).status_code == 200


def test_the_supervisor_reports_restarts_and_liveness_on_metrics(system: RunningSystem) -> None:
    status = system.status()
    metrics = httpx.get(f"{system.supervisor_url}/metrics", timeout=5).text

    for name, process in status.items():
        assert f'orderly_process_restarts_total{{process="{name}"}} {float(process["restarts"])}' in metrics
        up = 1.0 if process["state"] == "running" else 0.0
        assert f'orderly_process_up{{process="{name}"}} {up}' in metrics


def test_ctrl_c_stops_everything_in_reverse_order_drained_one_line_each_and_exits_0(system: RunningSystem) -> None:
    status = system.status()
    order = [name for name, p in status.items() if p["state"] == "running"]
    groups = {
        name: [psutil.Process(p["pid"]), *psutil.Process(p["pid"]).children(recursive=True)]
        for name, p in status.items()
        if p["pid"] is not None
    }
    seen = len(system.lines)

    code = system.stop(signal.SIGINT)

    assert code == 0
    tail = system.lines[seen:]
    print("\n".join(line for line in tail if "| system " in line or "system" in line.split("|")[0]))
    stops = [m.groups() for line in tail if (m := re.search(r"\| (stopped|killed) (\S+) \(pid \d+\)", line))]
    assert [name for _, name in stops] == list(reversed(order))
    assert {verb for verb, _ in stops} == {"stopped"}, "every process drained within its deadline"
    assert not [line for line in tail if "SIGKILL" in line]
    assert not [name for name, members in groups.items() if any(alive(m) for m in members)]
