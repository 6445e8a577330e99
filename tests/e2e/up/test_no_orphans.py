"""An API's worker processes never outlive its main process: after `kill -9` of the main process, nothing serves its
port within 2 s and none of its children survives, with or without a supervisor around it."""

from __future__ import annotations

import os
import signal
import socket
import time

import httpx
import psutil
import pytest

from orderly.platform.settings import InfraSettings
from tests.plumbing import Processes, Spawned, free_port, infra_env

pytestmark = pytest.mark.slow

GONE_WITHIN = 2.0


def serving(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_serving(api: Spawned, ports: list[int]) -> None:
    deadline = time.monotonic() + 120
    while not all(serving(port) for port in ports):
        assert api.proc.poll() is None, "\n".join(api.errors[-30:])
        assert time.monotonic() < deadline, "the API never answered /healthz"
        time.sleep(0.1)


def kill_main_and_measure(api: Spawned, ports: list[int]) -> tuple[float, list[psutil.Process]]:
    """kill -9 the main process only; returns how long until its children are gone and its ports free."""
    children = psutil.Process(api.proc.pid).children(recursive=True)
    assert children
    os.kill(api.proc.pid, signal.SIGKILL)
    began = time.monotonic()
    while any(alive(child) for child in children) or not all(port_free(port) for port in ports):
        if time.monotonic() - began > 30:
            break
        time.sleep(0.02)
    survivors = [child for child in children if alive(child)]
    for survivor in survivors:  # so that a failing run does not leave them serving (or hang on their output pipe)
        survivor.kill()
    return time.monotonic() - began, survivors


@pytest.mark.parametrize("service", ["ingest", "items", "loms"])
def test_killing_a_multi_worker_apis_main_process_takes_its_workers_and_frees_its_port(
    processes: Processes, infra: InfraSettings, service: str
) -> None:
    port = free_port()
    api = processes.start(service, "api", "--port", str(port), "--workers", "2", env=infra_env(infra))
    wait_serving(api, [port])
    assert len(psutil.Process(api.proc.pid).children()) == 2

    took, survivors = kill_main_and_measure(api, [port])

    print(f"{service} api: workers gone and port free {took:.3f} s after kill -9 of the main process")
    assert not survivors, f"orphaned workers: {[s.pid for s in survivors]}"
    assert took < GONE_WITHIN, f"the port was served or held for {took:.1f} s after the kill"
    assert not serving(port)


def test_killing_the_parent_of_several_sums_instances_takes_every_instance_and_frees_their_ports(
    processes: Processes, infra: InfraSettings
) -> None:
    first = next(port for port in iter(free_port, None) if port_free(port + 1))  # two consecutive free ports
    ports = [first, first + 1]
    api = processes.start("sums", "api", "--port", str(first), "--instances", "2", env=infra_env(infra))
    wait_serving(api, ports)

    took, survivors = kill_main_and_measure(api, ports)

    print(f"sums --instances 2: instances gone and ports free {took:.3f} s after kill -9 of the parent")
    assert not survivors, f"orphaned instances: {[s.pid for s in survivors]}"
    assert took < GONE_WITHIN, f"the ports were served or held for {took:.1f} s after the kill"
