"""See it running: with `orderly up`, every process is healthy and serves its metric families, `orderly status`
lists it, and Prometheus scrapes every target.

`orderly up` runs on the shared stack and the usual ports (so the test holds /tmp/orderly-up.lock while it runs), on
this test run's private databases, vhost, streams and topics.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orderly.platform.processes import SUPERVISOR_PORT
from orderly.platform.settings import InfraSettings
from orderly.runner import all_processes
from tests.plumbing import Namespace, eventually, infra_env

UP_LOCK = Path("/tmp/orderly-up.lock")
T = TypeVar("T")

BATCHES = {"orderly_batch_size", "orderly_batch_seconds"}
FAMILIES: dict[str, set[str]] = {
    "ingest-worker": {"orderly_queue_depth", "orderly_dead_letters", "orderly_active", *BATCHES},
    "ingest-daemon": {"orderly_daemon_lag_events", "orderly_active"},
    "items-relay": {"orderly_outbox_pending", "orderly_outbox_oldest_age_seconds", "orderly_active", *BATCHES},
    "items-audit": {"orderly_consumer_lag", "orderly_dead_letters", "orderly_active", *BATCHES},
    "loms-relay": {"orderly_outbox_pending", "orderly_outbox_oldest_age_seconds", "orderly_active", *BATCHES},
    "notifier": {"orderly_consumer_lag", "orderly_dead_letters", "orderly_active"},
    "sums": {"http_requests", "http_request_duration_seconds", *BATCHES},
    "api": {"http_requests", "http_request_duration_seconds"},
}


def expected_families(name: str) -> set[str]:
    for kind, families in FAMILIES.items():
        if name.startswith(kind):
            return families
    return FAMILIES["api"]


@pytest.fixture
async def up_env(namespace: Namespace) -> dict[str, str]:
    """Every server's address with this run's private namespaces, for `orderly up` and its processes."""
    return infra_env(await namespace.settings("up"))


@contextlib.contextmanager
def orderly_up(log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`orderly up` under the shared lock; stopped with Ctrl-C (SIGINT) after the test, leftovers killed by PID."""
    with UP_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with log.open("wb") as out:
            up = subprocess.Popen(
                [sys.executable, "-m", "orderly", "up", "--keep-stack"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env, "ORDERLY_UP__PORT_OFFSET": "0"},
            )
        try:
            yield up
        finally:
            family = [up.pid]
            with contextlib.suppress(psutil.NoSuchProcess):
                family += [child.pid for child in psutil.Process(up.pid).children(recursive=True)]
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=120)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
            for pid in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(pid).kill()


def _first_failure(log: Path) -> str:
    """What `orderly up` printed up to the first process that stopped (the cause, not the cascade after it)."""
    lines = log.read_text(errors="replace").splitlines()
    first = next((i for i, line in enumerate(lines) if "stopped (rc=" in line), len(lines) - 1)
    return "\n".join(lines[max(first - 60, 0) : first + 1])


def status_json() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "orderly", "status", "--json"], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def families(url: str) -> dict[str, list[Any]]:
    text = httpx.get(url, timeout=5).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


@pytest.mark.timeout(900)
def test_with_orderly_up_every_process_is_healthy_serves_its_metrics_and_prometheus_scrapes_it(
    stack: InfraSettings, up_env: dict[str, str], tmp_path: Path
) -> None:
    names = [spec.name for spec in all_processes() if not spec.init]
    with orderly_up(tmp_path / "up.log", up_env) as up:

        def all_healthy() -> dict[str, Any] | None:
            assert up.poll() is None, _first_failure(tmp_path / "up.log")
            document = status_json()
            # The supervisor marks a process running after its own probe answered, a moment after /healthz first
            # answers here: wait for both, or the state check below races the supervisor (seen in CI).
            running = not document["supervisor"] or all(p["state"] == "running" for p in document["processes"])
            healthy = all(p["health"] == "ok" for p in document["processes"])
            return document if healthy and running else None

        document = eventually(all_healthy, within=300, what="every process of `orderly up` to answer /healthz")
        assert [p["name"] for p in document["processes"]] == names
        for process in document["processes"]:
            assert set(process) >= {"name", "state", "pid", "restarts", "health", "metrics_url"}
            if document["supervisor"]:
                assert process["state"] == "running", process
                assert process["pid"], process
        assert {s["name"] for s in document["servers"] if s["ready"]} >= {"postgres", "kafka", "prometheus"}
        [prometheus] = [s for s in document["servers"] if s["name"] == "prometheus"]
        assert prometheus["url"] == stack.prometheus.url()
        assert set(document["pipelines"]) == {"ingest", "sums", "items", "loms"}

        # Every process serves the metric families of its kind (the gauges that need a query are set on scrape).
        for process in document["processes"]:
            served = families(process["metrics_url"])
            missing = expected_families(process["name"]) - set(served)
            assert not missing, f"{process['name']} does not serve {missing}"

        def active(kind: str) -> float:
            return sum(
                sample.value
                for p in document["processes"]
                if p["name"].startswith(kind)
                for sample in families(p["metrics_url"])["orderly_active"]
            )

        eventually(lambda: active("ingest-worker") == 1, within=30, what="exactly one active ingest worker")
        eventually(lambda: active("loms-relay") == 1, within=30, what="the loms relay to hold its lock")
        eventually(lambda: active("notifier") == 2, within=60, what="two notifiers with a partition each")

        # A standby is healthy and ready, and says it is a standby.
        ports = {spec.name: spec.health_port for spec in all_processes() if spec.health_port}
        for name in ("ingest-worker-1", "ingest-worker-2", "notifier-1", "notifier-2", "notifier-3"):
            port = ports[name]
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            assert health.status_code == ready.status_code == 200, (name, health.text, ready.text)
            assert health.json()["role"] == ready.json()["role"]
            assert health.json()["role"] in {"active", "standby"}
        workers = (ports["ingest-worker-1"], ports["ingest-worker-2"])
        roles = [httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["role"] for port in workers]
        assert sorted(roles) == ["active", "standby"]

        # Prometheus scrapes every process (and the supervisor, once `orderly up` serves it).
        supervised = False
        with contextlib.suppress(httpx.HTTPError):
            supervised = httpx.get(f"http://127.0.0.1:{SUPERVISOR_PORT}/status", timeout=2).status_code == 200
        expected = set(names) | ({"supervisor"} if supervised else set())

        def all_up() -> dict[str, float] | None:
            result = httpx.get(f"{stack.prometheus.url()}/api/v1/query", params={"query": "up"}, timeout=5).json()
            up_by_process = {r["metric"].get("process", ""): float(r["value"][1]) for r in result["data"]["result"]}
            done = expected <= set(up_by_process) and all(up_by_process[p] == 1 for p in expected)
            return up_by_process if done else None

        up_by_process = eventually(all_up, within=120, what=f"Prometheus to report up == 1 for {sorted(expected)}")
        assert {p: up_by_process[p] for p in expected} == dict.fromkeys(expected, 1.0)
