"""`orderly sums api --instances N`: one parent supervising N instances, stopped together whichever one exits."""

from __future__ import annotations

import socket
import subprocess

import psutil
import pytest

from orderly.platform.settings import InfraSettings
from tests.plumbing import Processes, free_port, infra_env

pytestmark = pytest.mark.slow


def listening_ports(process: psutil.Process) -> set[int]:
    return {c.laddr.port for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports nothing listens on (the instances take consecutive ports)."""
    while True:
        first = free_port()
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first


def test_when_any_instance_dies_the_parent_stops_the_others_and_exits_non_zero(
    processes: Processes, sums_infra: InfraSettings
) -> None:
    victim = 2  # not the first: the parent used to wait on the first child alone
    first = consecutive_free_ports(3)
    ports = [first, first + 1, first + 2]
    parent = processes.start("sums", "api", "--instances", "3", "--port", str(first), env=infra_env(sums_infra))
    for port in ports:
        parent.wait_http_ready(port, timeout=120)
    children = psutil.Process(parent.proc.pid).children()
    assert len(children) == 3
    [doomed] = [c for c in children if any(port == ports[victim] for port in listening_ports(c))]
    doomed.kill()
    try:
        code = parent.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"instance {victim} died and the parent did not notice")
    assert code != 0
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, "the other instances were stopped with the parent"
