"""Test plumbing: the local stack is up, and every test run gets namespaces of its own on every server.

A run's namespaces are named after a short random run id: PostgreSQL and MariaDB databases ``t_<run>...``, a Redis
key prefix ``t:<run>:``, a RabbitMQ vhost, NATS stream names, a ClickHouse database and Kafka topic names with that
prefix. Everything a run created is dropped when it ends (``ORDERLY_TEST_KEEP=1`` keeps it for a post-mortem).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncmy
import asyncpg
import httpx
import nats
import redis.asyncio as aioredis
from confluent_kafka.admin import AdminClient
from starlette.types import ASGIApp, Message, Scope

from orderly.platform.pools import clickhouse_client, kafka_config
from orderly.platform.settings import InfraSettings
from orderly.platform.supervisor import Program

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, within: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` (plain or async) until it holds; fail naming ``what`` once ``within`` seconds passed.

    The one way tests wait for a condition: never a bare sleep, always a condition with a deadline.
    """
    deadline = time.monotonic() + within
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(interval)


def eventually(check: Callable[[], T | None], *, within: float, what: str, interval: float = 0.05) -> T:
    """``wait_until`` for synchronous tests: poll ``check`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(interval)


def ensure_stack_up() -> None:
    """Start the local stack (or reuse it) through the same command a person would use."""
    done = subprocess.run([sys.executable, "-m", "orderly", "stack", "up"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the local stack did not come up:\n{done.stdout}\n{done.stderr}")


@dataclass
class Namespace:
    """One test run's corner of every server; ``settings`` points every client at it."""

    base: InfraSettings
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    pg_databases: list[str] = field(default_factory=list)
    mysql_databases: list[str] = field(default_factory=list)
    vhosts: list[str] = field(default_factory=list)
    ch_databases: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    @property
    def prefix(self) -> str:
        return f"t_{self.run}"

    async def settings(self, name: str = "main") -> InfraSettings:
        """Settings whose every resource is fresh and private to this run (one set per ``name``)."""
        if name in self.names:
            raise ValueError(f"namespace name {name!r} is already taken in this run; give each test its own")
        self.names.add(name)
        tag = f"{self.prefix}_{name}"
        await self._create_pg(tag)
        await self._create_mysql(tag)
        await self._create_vhost(tag)
        await self._create_clickhouse(tag)
        b = self.base
        return InfraSettings(
            postgres=b.postgres.model_copy(update={"database": tag}),
            mysql=b.mysql.model_copy(update={"database": tag}),
            redis=b.redis.model_copy(update={"key_prefix": f"t:{self.run}:{name}:"}),
            rabbitmq=b.rabbitmq.model_copy(update={"vhost": tag}),
            nats=b.nats.model_copy(update={"stream_prefix": f"T{self.run}_{name}_"}),
            clickhouse=b.clickhouse.model_copy(update={"database": tag}),
            kafka=b.kafka.model_copy(update={"topic_prefix": f"t.{self.run}.{name}."}),
        )

    async def _create_pg(self, database: str) -> None:
        conn = await asyncpg.connect(self.base.postgres.dsn("postgres"))
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        self.pg_databases.append(database)

    async def _mysql_admin(self) -> Any:
        m = self.base.mysql
        return await asyncmy.connect(host=m.host, port=m.port, user=m.user, password=m.password.get_secret_value())

    async def _create_mysql(self, database: str) -> None:
        conn = await self._mysql_admin()
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        self.mysql_databases.append(database)

    def _management(self) -> httpx.AsyncClient:
        r = self.base.rabbitmq
        return httpx.AsyncClient(
            base_url=f"http://{r.host}:{r.management_port}/api",
            auth=(r.user, r.password.get_secret_value()),
            timeout=30,
        )

    async def _create_vhost(self, vhost: str) -> None:
        async with self._management() as api:
            (await api.put(f"/vhosts/{vhost}")).raise_for_status()
            grant = {"configure": ".*", "write": ".*", "read": ".*"}
            user = self.base.rabbitmq.user
            (await api.put(f"/permissions/{vhost}/{user}", json=grant)).raise_for_status()
        self.vhosts.append(vhost)

    async def _create_clickhouse(self, database: str) -> None:
        client = clickhouse_client(self.base.clickhouse, database="default")
        try:
            client.execute(f"CREATE DATABASE `{database}`")
        finally:
            client.disconnect()
        self.ch_databases.append(database)

    async def drop_all(self) -> None:
        if os.environ.get("ORDERLY_TEST_KEEP") == "1":
            return
        await self._drop_sql_databases()
        async with self._management() as api:
            for vhost in self.vhosts:
                await api.delete(f"/vhosts/{vhost}")
        client = clickhouse_client(self.base.clickhouse, database="default")
        try:
            for database in self.ch_databases:
                client.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            client.disconnect()
        await self._drop_prefixed()

    async def _drop_sql_databases(self) -> None:
        conn = await asyncpg.connect(self.base.postgres.dsn("postgres"))
        try:
            for database in self.pg_databases:
                await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()
        mysql = await self._mysql_admin()
        try:
            async with mysql.cursor() as cur:
                for database in self.mysql_databases:
                    await cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            mysql.close()

    async def _drop_prefixed(self) -> None:
        """Redis keys, NATS streams and Kafka topics carry the run's prefix."""
        redis = aioredis.Redis.from_url(self.base.redis.url())
        try:
            async for key in redis.scan_iter(match=f"t:{self.run}:*", count=1000):
                await redis.delete(key)
        finally:
            await redis.aclose()
        nc = await nats.connect(self.base.nats.url())
        try:
            js = nc.jetstream()
            for stream in await js.streams_info():
                if stream.config.name and stream.config.name.startswith(f"T{self.run}_"):
                    await js.delete_stream(stream.config.name)
        finally:
            await nc.close()
        admin = AdminClient(dict(kafka_config(self.base.kafka)))
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"t.{self.run}.")]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.result()


def http_scope(
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    state: dict[str, Any] | None = None,
) -> Scope:
    """An HTTP request's ASGI scope as a server hands it over (what FastAPI and the Edge read of it)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": list(headers),
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "state": {} if state is None else state,
    }


async def asgi_call(
    app: ASGIApp, scope: Scope, *, chunks: Sequence[bytes] = (b"",), received: list[bytes] | None = None
) -> list[Message]:
    """Call an ASGI app once with a request body sent as ``chunks`` (one empty chunk unless given); returns the
    messages it sent. Each chunk the app took is appended to ``received``; after the last the client is gone."""
    sent: list[Message] = []
    pending = list(chunks)

    async def receive() -> Message:
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        if received is not None:
            received.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


_HANDED_OUT: set[int] = set()


def _unclaimed_range() -> tuple[int, int]:
    """Ports outside the kernel's ephemeral range, which outgoing connections draw their local ports from."""
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    # Below 65000: RabbitMQ's CLI takes the ten ports above its distribution port.
    return (high + 1, 65_000) if 65_000 - high >= 1000 else (10_000, low)


def free_port() -> int:
    """A port nothing listens on, never handed out twice in a run, and outside the ephemeral range: a port the
    kernel picks for ``bind(0)`` can be taken by any client's outgoing connection (or be picked again) before the
    server it was meant for binds it, and a scratch server then fails to start (seen in CI: NATS on Prometheus's port).
    """
    import random
    import socket

    start, stop = _unclaimed_range()
    for _ in range(500):
        port = random.randrange(start, stop)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {start}-{stop - 1}")


class ScratchStack:
    """A second, private copy of some servers on free ports, for tests that stop, kill or break a server.

    The shared stack is never disturbed: restart tests run against their own PostgreSQL, RabbitMQ, Kafka, ...
    """

    def __init__(self, name: str, servers: list[str]) -> None:
        self.servers = servers
        from orderly.stack.manager import default_root

        shared = default_root()
        self.root = shared / "scratch" / f"{name}-{secrets.token_hex(3)}"
        p = free_port
        self.env = {
            "ORDERLY_STACK_DIR": str(self.root),
            "ORDERLY_POSTGRES__PORT": str(p()),
            "ORDERLY_MYSQL__PORT": str(p()),
            "ORDERLY_REDIS__PORT": str(p()),
            "ORDERLY_NATS__PORT": str(p()),
            "ORDERLY_NATS__MONITOR_PORT": str(p()),
            "ORDERLY_CLICKHOUSE__PORT": str(p()),
            "ORDERLY_CLICKHOUSE__HTTP_PORT": str(p()),
            "ORDERLY_RABBITMQ__PORT": str(p()),
            "ORDERLY_RABBITMQ__MANAGEMENT_PORT": str(p()),
            "ORDERLY_RABBITMQ__DISTRIBUTION_PORT": str(p()),
            "ORDERLY_RABBITMQ__EPMD_PORT": str(p()),
            "ORDERLY_RABBITMQ__STOMP_PORT": str(p()),
            "ORDERLY_KAFKA__PORT": str(p()),
            "ORDERLY_KAFKA__CONTROLLER_PORT": str(p()),
            "ORDERLY_PROMETHEUS__PORT": str(p()),
        }
        # The scratch Kafka reuses the jars the shared stack resolved.
        lib = shared / "lib"
        self.root.mkdir(parents=True, exist_ok=True)
        if lib.exists() and not (self.root / "lib").exists():
            (self.root / "lib").symlink_to(lib)

    @property
    def settings(self) -> InfraSettings:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return InfraSettings()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "orderly", "stack", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=False,
            # Above the slowest server's start-up deadline (120 s) plus its stop: a hang is named here, not left to
            # the test's own timeout.
            timeout=300,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"orderly stack {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def up(self, *servers: str) -> None:
        self.cli("up", *(servers or self.servers))

    def down(self, *servers: str) -> None:
        self.cli("down", *(servers or self.servers))

    def kill(self, server: str) -> None:
        """kill -9 the server's main process, as a crash would."""
        import signal

        self.signal(server, signal.SIGKILL)

    def signal(self, server: str, sig: int) -> None:
        """Send ``sig`` to the server's main process (SIGSTOP: a server that hangs with its sockets open)."""
        from orderly.stack.manager import Stack

        [srv] = Stack(root=self.root, settings=self.settings).servers([server])
        pid = srv.pid()
        if pid is not None:
            os.kill(pid, sig)

    def remove(self) -> None:
        import shutil

        self.cli("down", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def infra_env(settings: InfraSettings) -> dict[str, str]:
    """The ``ORDERLY_*`` variables that point a child process at the same resources as ``settings``."""
    env: dict[str, str] = {}
    for resource, model in settings.model_dump(exclude={"log"}).items():
        for key in model:
            value = getattr(getattr(settings, resource), key)
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            env[f"ORDERLY_{resource.upper()}__{key.upper()}"] = str(value)
    return env


class Spawned:
    """A process of ours (``python -m orderly …``) started by a test: its stdout is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], *, module: str = "orderly") -> None:
        import threading

        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            # The repository root on the path, so a test-only entry module (tests.faults...) imports from any cwd.
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "ORDERLY_LOG__FORMAT": "json", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_http_ready(self, port: int, *, timeout: float = 120) -> None:
        """Wait until GET /readyz answers 200; fail with the process's stderr if it dies or never gets ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"orderly {' '.join(self.args)} not ready on port {port}:\n" + "\n".join(self.errors[-30:]))

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9 the process and everything it started (granian's workers too), as a crash would."""
        import psutil

        if self.proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
                for process in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, wait for a graceful exit (SIGKILL after ``timeout``); returns the exit code."""
        import signal

        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        # Close the pipes now: left to the garbage collector they raise ResourceWarning (an error under pytest).
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


@dataclass
class Processes:
    """Every process a test spawned; all stopped when the test ends."""

    spawned: list[Spawned] = field(default_factory=list)

    def start(self, *args: str, env: dict[str, str], module: str = "orderly") -> Spawned:
        """``python -m orderly <args>`` (or a test-only entry ``module`` such as ``tests.faults.sums_crash``)."""
        process = Spawned(list(args), env, module=module)
        self.spawned.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.spawned):
            process.stop()


class RunningSystem:
    """`orderly up` as a person runs it, but private: its own stack copy, its own server ports, its own process ports.

    ``ORDERLY_UP__PORT_OFFSET`` moves every process port (and the supervisor's) by an offset whose ports are free, and
    the servers are a scratch stack under ``.stack/scratch/``, so this runs beside the shared stack, a person's
    `make up` and other test runs. ``extra`` programs run beside the services' processes (e.g. one that crash-loops).
    """

    def __init__(self, *, extra: Sequence[Program] = (), name: str = "up") -> None:
        import threading

        from orderly.stack.servers import ALL_SERVERS

        self.extra = [program.name for program in extra]
        self.scratch = ScratchStack(name, [server.name for server in ALL_SERVERS])
        self.offset = _free_offset()
        self.env = {**os.environ, **self.scratch.env, "ORDERLY_UP__PORT_OFFSET": str(self.offset)}
        extra_json = json.dumps([{"name": p.name, "argv": list(p.argv)} for p in extra])
        launcher = (
            "import json, sys\n"
            "from orderly.platform.supervisor import Program\n"
            "from orderly.runner import up\n"
            "extra = [Program(p['name'], tuple(p['argv'])) for p in json.loads(sys.argv[1])]\n"
            "sys.exit(up(extra=extra))\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", launcher, extra_json],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def supervisor_url(self) -> str:
        from orderly.platform.processes import SUPERVISOR_PORT

        return f"http://127.0.0.1:{SUPERVISOR_PORT + self.offset}"

    def port(self, usual: int) -> int:
        """Where a process that usually listens on ``usual`` listens in this system."""
        return usual + self.offset

    def status(self) -> dict[str, dict[str, Any]]:
        """The supervisor's /status, by process name."""
        answer = httpx.get(f"{self.supervisor_url}/status", timeout=5)
        answer.raise_for_status()
        return {p["name"]: p for p in answer.json()["processes"]}

    def wait_until(self, what: str, condition: Callable[[], bool], *, timeout: float) -> float:
        """Poll ``condition`` until it holds; returns the seconds it took. Fails with the stream's tail otherwise."""
        began = time.monotonic()

        def holds() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"orderly up exited ({self.proc.poll()})")
            with contextlib.suppress(httpx.HTTPError):
                return condition()
            return False

        try:
            eventually(holds, within=timeout, what=what)
        except AssertionError as exc:
            tail = "\n".join(self.lines[-60:])
            raise AssertionError(f"{what}: not within {timeout:.0f} s ({exc})\n{tail}") from None
        return time.monotonic() - began

    def wait_ready(self, *, timeout: float = 600) -> None:
        """Every service process running (an API: answering /healthz) and every API answering /readyz."""

        def ready() -> bool:
            processes = [p for p in self.status().values() if p["name"] not in self.extra]
            if not processes or any(p["state"] != "running" for p in processes):
                return False
            return all(
                httpx.get(f"http://127.0.0.1:{p['probe_port']}/readyz", timeout=2).status_code == 200
                for p in processes
                if p["probe_port"] is not None
            )

        self.wait_until("the system got ready", ready, timeout=timeout)

    def stop(self, sig: int = signal.SIGINT, *, timeout: float = 240) -> int:
        """Send ``sig`` to `orderly up` and wait for it to end; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def remove(self) -> None:
        self.stop()
        self.scratch.remove()


def _free_offset() -> int:
    """A random ORDERLY_UP__PORT_OFFSET whose every process port (and the supervisor's) is free right now."""
    import random
    import socket

    from orderly.platform.processes import SUPERVISOR_PORT
    from orderly.runner import service_processes

    usual = [SUPERVISOR_PORT] + [
        port for spec in service_processes() for port in (spec.http_port, spec.health_port) if port is not None
    ]
    for _ in range(50):
        offset = random.randrange(1000, 10_000, 10)
        ports = [port + offset for port in usual]
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return offset
    raise RuntimeError("no free port offset for a private `orderly up`")


def orderly_dlq(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``orderly dlq …`` as an operator runs it, against the resources ``env`` points at."""
    return subprocess.run(
        [sys.executable, "-m", "orderly", "dlq", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )


def dead_letters_listed(env: Mapping[str, str], pipeline: str) -> list[dict[str, Any]]:
    """``orderly dlq list <pipeline> --json``: one dict per parked message."""
    done = orderly_dlq(env, "list", pipeline, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def pg_value(dsn: str, sql: str, *args: Any) -> Any:
    """The first column of the first row of one query, on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()
