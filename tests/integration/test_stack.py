"""The local stack: eight real servers on loopback, idempotent start, clean stop, one-line errors."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from collections.abc import Callable

import psutil

from orderly.platform.settings import InfraSettings
from orderly.stack.manager import Stack
from tests.plumbing import ScratchStack


def orderly(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orderly", *args],
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def listeners(ports: set[int]) -> list[tuple[str, int]]:
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
    ]


def all_ports(stack: Stack) -> set[int]:
    return {port for server in stack.servers() for port in server.ports.values()}


def test_status_shows_eight_ready_servers_with_their_versions(stack: InfraSettings) -> None:
    done = orderly("stack", "status")
    print(done.stdout)  # the test log keeps every server's version
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8/8 ready" in done.stdout
    for name, version_start in [
        ("postgres", "15."),
        ("mariadb", "1:10.11"),
        ("redis", "5:7."),
        ("kafka", "4."),
        ("prometheus", "2.42"),
    ]:
        [row] = [line for line in done.stdout.splitlines() if f" {name} " in line]
        assert version_start in row, row


def test_every_stack_port_listens_on_loopback_only(stack: InfraSettings) -> None:
    found = listeners(all_ports(Stack()))
    assert {port for _, port in found} == all_ports(Stack())
    for ip, port in found:
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)
        assert (mapped or address).is_loopback, f"port {port} listens on {ip}"


def test_up_twice_reuses_the_running_servers(stack: InfraSettings) -> None:
    before = {s.name: s.pid for s in Stack().status()}
    done = orderly("stack", "up")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("reused") == 8
    assert {s.name: s.pid for s in Stack().status()} == before


def test_down_stops_only_what_it_started_and_frees_every_port(
    scratch_stack: Callable[..., ScratchStack],
) -> None:
    scratch = scratch_stack("down", "redis", "nats", "rabbitmq")
    bystander = socket.socket()
    bystander.bind(("127.0.0.1", 0))
    bystander.listen()
    try:
        scratch.up()
        stack = Stack(root=scratch.root, settings=scratch.settings)
        servers = stack.servers(scratch.servers)
        pids = [s.pid() for s in servers]
        ports = {port for s in servers for port in s.ports.values()}
        assert all(pids)
        assert {port for _, port in listeners(ports)} == ports
        scratch.down()
        assert not any(psutil.pid_exists(pid) for pid in pids if pid)
        assert listeners(ports) == [], "epmd included, nothing of the stack may keep listening"
        assert listeners({bystander.getsockname()[1]}), "a process the stack did not start keeps running"
    finally:
        bystander.close()


def test_a_taken_port_is_a_one_line_error_naming_server_cause_and_fix(
    scratch_stack: Callable[..., ScratchStack],
) -> None:
    scratch = scratch_stack("taken", "redis")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", int(scratch.env["ORDERLY_REDIS__PORT"])))
    squatter.listen()
    try:
        done = scratch.cli("up", "redis", check=False)
    finally:
        squatter.close()
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error redis: ")
    assert f"port {scratch.env['ORDERLY_REDIS__PORT']}" in line
    assert "taken" in line
    assert "fix:" in line
    assert "Traceback" not in done.stdout + done.stderr


def test_a_missing_binary_is_a_one_line_error_with_the_fix(scratch_stack: Callable[..., ScratchStack]) -> None:
    scratch = scratch_stack("missing", "redis")
    scratch.env["PATH"] = "/nonexistent"
    done = scratch.cli("up", "redis", check=False)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert "redis: redis-server is missing" in line
    assert "make setup" in line


def test_a_server_that_will_not_start_names_its_log(scratch_stack: Callable[..., ScratchStack]) -> None:
    scratch = scratch_stack("broken", "postgres")
    data = scratch.root / "postgres" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("7\n")  # a cluster from a PostgreSQL this binary cannot read
    done = scratch.cli("up", "postgres", check=False)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert "postgres: the server exited during start-up" in line
    assert f"(log: {scratch.root / 'postgres'}" in line
    assert "Traceback" not in done.stderr


def test_the_stacks_redis_caps_memory_and_evicts_only_keys_with_a_ttl(
    scratch_stack: Callable[..., ScratchStack],
) -> None:
    import redis

    scratch = scratch_stack("maxmemory", "redis")
    scratch.up()
    client = redis.Redis(host="127.0.0.1", port=scratch.settings.redis.port)
    try:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
        assert int(client.config_get("maxmemory")["maxmemory"]) == 256 * 1024 * 1024
    finally:
        client.close()
