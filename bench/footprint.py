"""`make bench-footprint`: memory and CPU of every process of `orderly up` under a short mixed load.

The Kubernetes manifests (deploy/k8s) size their resource requests and limits from these figures. `orderly up` runs
the whole system on the local stack; wrk drives every API at once for BENCH_DURATION (ingest, sums, item writes and
reads, order creation), which also keeps every worker, relay, consumer and the daemon busy. For each process the
harness samples the RSS of its whole process tree (what a container is charged for: granian's supervisor and its
worker together) and the CPU time it used from the start to the end of the load.

The system runs in a namespace of its own on the local stack's servers (databases, vhost, stream and topic prefixes,
as the tests make them), dropped afterwards. Run it alone: it holds /tmp/orderly-up.lock (the usual ports) —
`flock /tmp/orderly-bench.lock make bench-footprint`.
Results: bench/results/footprint.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from tests.plumbing import Namespace, infra_env

from orderly.platform.settings import InfraSettings
from orderly.runner import all_processes, wait_http_ready

RESULTS = Path(__file__).parent / "results"
DURATION = int(os.environ.get("BENCH_DURATION", "30"))
CONNECTIONS = 8  # per API: a moderate load that leaves CPU for the background processes on a 2-core machine

LOADS: dict[str, tuple[int, str]] = {
    "ingest": (8101, 'request = function() return wrk.format("GET", "/ingest?n=1&n=2&n=3") end'),
    "sums": (
        8201,
        "local i = 0\nrequest = function() i = i + 1 "
        'return wrk.format("GET", "/sum?number=1&ikey=fp-" .. os.time() .. "-" .. i) end',
    ),
    "items": (
        8301,
        "local i = 0\nrequest = function() i = i + 1\n"
        '  if i % 4 == 0 then return wrk.format("POST", "/item/create?campaignId=1", '
        '{["Content-Type"] = "application/json"}, \'{"name": "fp"}\') end\n'
        '  return wrk.format("GET", "/items/list?limit=10&offset=1") end',
    ),
    "loms": (
        8401,
        'request = function() return wrk.format("POST", "/order/create", {["Content-Type"] = "application/json"}, '
        '\'{"user": 1, "items": [{"sku": 1001, "count": 1}]}\') end',
    ),
}


class Sampler:
    """Peak tree RSS per process, sampled every 0.2 s on a thread."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.peak: dict[str, int] = dict.fromkeys(procs, 0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for name, proc in self.procs.items():
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak[name], sum(p.memory_info().rss for p in tree(proc)))
            self.stop.wait(0.2)


def tree(proc: psutil.Process) -> list[psutil.Process]:
    return [proc, *proc.children(recursive=True)]


def cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in tree(proc):
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def find_processes(up: psutil.Process, deadline: float) -> dict[str, psutil.Process]:
    """Each process of `orderly up` by name: an API by its listening port (granian renames its processes), the others
    by their command line (honcho execs `python -m orderly <args>`)."""
    specs = [spec for spec in all_processes() if not spec.init]
    found: dict[str, psutil.Process] = {}
    while len(found) < len(specs) and time.monotonic() < deadline:
        listeners: dict[int, set[int]] = {}
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.pid:
                listeners.setdefault(conn.laddr.port, set()).add(conn.pid)
        children = up.children(recursive=True)
        for spec in specs:
            if spec.name in found:
                continue
            if spec.http_port:
                pids = listeners.get(spec.http_port, set())
                top = [pid for pid in pids if psutil.Process(pid).ppid() not in pids]
                if len(top) == 1:
                    found[spec.name] = psutil.Process(top[0])
                continue
            for child in children:
                with contextlib.suppress(psutil.Error):
                    cmd = child.cmdline()
                    taken = child in found.values()
                    if "orderly" in cmd and cmd[cmd.index("orderly") + 1 :] == list(spec.args) and not taken:
                        found[spec.name] = child
                        break
        time.sleep(0.5)
    return found


def main() -> None:
    namespace = Namespace(base=InfraSettings())
    settings = asyncio.run(namespace.settings("footprint"))
    try:
        measure(infra_env(settings))
    finally:
        asyncio.run(namespace.drop_all())


def measure(namespace_env: dict[str, str]) -> None:
    specs = [spec for spec in all_processes() if not spec.init]
    names = [spec.name for spec in specs]
    log = tempfile.NamedTemporaryFile(prefix="footprint-up-", suffix=".log", delete=False)  # noqa: SIM115
    env = {**os.environ, **namespace_env, "ORDERLY_LOG__LEVEL": "WARNING"}
    up = subprocess.Popen(
        [sys.executable, "-m", "orderly", "up"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        for spec in specs:
            if spec.http_port and not wait_http_ready(spec.http_port, timeout=120):
                raise SystemExit(f"{spec.name} did not get ready; see {log.name}")
        procs = find_processes(psutil.Process(up.pid), time.monotonic() + 30)
        missing = set(names) - set(procs)
        if missing:
            raise SystemExit(f"processes not found: {sorted(missing)}")
        time.sleep(3)  # settle after start-up, so start-up CPU is not counted
        sampler = Sampler(procs)
        sampler.thread.start()
        cpu_before = {name: cpu_seconds(p) for name, p in procs.items()}
        started = time.monotonic()
        loads = []
        with tempfile.TemporaryDirectory() as folder:
            for service, (port, lua) in LOADS.items():
                script = Path(folder) / f"{service}.lua"
                script.write_text(lua + "\n")
                loads.append(
                    subprocess.Popen(
                        [
                            "wrk",
                            "-t1",
                            f"-c{CONNECTIONS}",
                            f"-d{DURATION}s",
                            "-s",
                            str(script),
                            f"http://127.0.0.1:{port}",
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            outputs = [load.communicate()[0] for load in loads]
        elapsed = time.monotonic() - started
        cpu_after = {name: cpu_seconds(p) for name, p in procs.items()}
        sampler.stop.set()
        sampler.thread.join()
        requests = {service: _requests_per_s(out) for service, out in zip(LOADS, outputs, strict=True)}
        result: dict[str, Any] = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB",
            "load": f"wrk -t1 -c{CONNECTIONS} -d{DURATION}s on each API at once",
            "requests_per_s": requests,
            "processes": {
                name: {
                    "peak_rss_mib": round(sampler.peak[name] / 2**20, 1),
                    "cpu_cores": round((cpu_after[name] - cpu_before[name]) / elapsed, 3),
                }
                for name in names
            },
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "footprint.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)


def _requests_per_s(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return 0.0


if __name__ == "__main__":
    main()
