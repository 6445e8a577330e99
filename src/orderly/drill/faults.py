"""The drill's fault injector for a system on this machine: `orderly up`'s supervisor and the local stack.

It kills processes with SIGKILL, by the PID the supervisor reports on ``/status``, and measures how long the
supervisor takes to bring each back (a new PID that answers its probe). It restarts servers through the local stack
(``Stack.restart``: stop, start, wait until ready) and measures how long the pipelines' APIs take to answer
``/readyz`` again. Where a kind of process runs as an active one and standbys, it kills the active one and a standby,
each found the way the pipeline itself decides: the queue's single active consumer in RabbitMQ, the consumer group's
assignment in Kafka, the holder of the relay's advisory lock in PostgreSQL.

Against a deployment elsewhere there is nothing to inject with: the drill runs its load and its checks only
(``--faults none``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import psutil
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from orderly.drill.pipeline import Pipeline, Target, kind_of
from orderly.ingest.settings import IngestSettings
from orderly.loms.kafka_admin import group_status
from orderly.loms.relay import RELAY_LOCK_KEY
from orderly.loms.settings import LomsSettings
from orderly.notifier.settings import NotifierSettings
from orderly.platform.pools import kafka_config
from orderly.runner import supervisor_port
from orderly.stack.base import StackError
from orderly.stack.manager import Stack

BACK_WITHIN_S = 30.0  # a killed process must be back (new PID, probe answering) within this
READY_WITHIN_S = 60.0  # after a server restart, the pipelines' APIs must answer /readyz within this
ROLE_WITHIN_S = 20.0  # how long to wait for a group of processes to settle who is active


@dataclass(frozen=True)
class Kill:
    """kill -9 of one process of a kind; ``role`` picks the active one or a standby where the kind has both."""

    kind: str
    role: str | None
    pipeline: str

    @property
    def title(self) -> str:
        return f"kill -9 {self.kind}" + (f" ({self.role})" if self.role else "")

    @property
    def pipelines(self) -> tuple[str, ...]:
        return (self.pipeline,)


@dataclass(frozen=True)
class Restart:
    """Restart of one server of the local stack, felt by every pipeline that uses it."""

    server: str
    pipelines: tuple[str, ...]
    api_ports: tuple[int, ...]  # the APIs of those pipelines: the restart is over when they answer /readyz

    @property
    def title(self) -> str:
        return f"restart {self.server}"


Fault = Kill | Restart


@dataclass
class FaultRecord:
    title: str
    pipelines: tuple[str, ...]
    injected: bool
    recovered: bool
    detail: str
    back_after: float | None = None


@dataclass(frozen=True)
class ProcessState:
    name: str
    state: str
    pid: int | None
    restarts: int
    probe_port: int | None


class Supervisor:
    """`orderly up`'s supervisor, read through its ``/status`` (JSON) on loopback."""

    def __init__(self, port: int | None = None) -> None:
        self.url = f"http://127.0.0.1:{port or supervisor_port()}/status"

    def status(self) -> dict[str, ProcessState]:
        """Every supervised process by name; raises httpx.HTTPError when the supervisor does not answer."""
        response = httpx.get(self.url, timeout=2)
        response.raise_for_status()
        found = {}
        for entry in response.json()["processes"]:
            found[entry["name"]] = ProcessState(
                name=entry["name"],
                state=str(entry.get("state", "")),
                pid=entry.get("pid"),
                restarts=int(entry.get("restarts") or 0),
                probe_port=entry.get("probe_port"),
            )
        return found


def answers(port: int, path: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200
    return False


def pid_of_connection(local_port: int, remote_port: int) -> int | None:
    """The PID of the process on this machine whose TCP connection goes from ``local_port`` to ``remote_port``."""
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == local_port and conn.raddr and conn.raddr.port == remote_port:
            return conn.pid
    return None


def owner(pid: int | None, processes: dict[str, ProcessState]) -> str | None:
    """The supervised process that is ``pid`` or one of its ancestors."""
    if pid is None:
        return None
    lineage = {pid}
    with contextlib.suppress(psutil.Error):
        lineage |= {parent.pid for parent in psutil.Process(pid).parents()}
    return next((p.name for p in processes.values() if p.pid in lineage), None)


def active_ingest_workers(processes: dict[str, ProcessState]) -> set[str]:
    """The queue's single active consumer, from RabbitMQ's management API."""
    settings = IngestSettings()
    rabbit = settings.rabbitmq
    url = (
        f"http://{rabbit.host}:{rabbit.management_port}/api/queues/"
        f"{quote(rabbit.vhost, safe='')}/{quote(settings.ingest.queue, safe='')}"
    )
    data = httpx.get(url, auth=(rabbit.user, rabbit.password.get_secret_value()), timeout=5).json()
    active = set()
    for consumer in data.get("consumer_details", []):
        if consumer.get("active"):
            peer = consumer.get("channel_details", {}).get("peer_port")
            name = owner(pid_of_connection(int(peer), rabbit.port), processes) if peer else None
            if name:
                active.add(name)
    return active


def active_notifiers(processes: dict[str, ProcessState]) -> set[str]:
    """The notifiers that hold partitions, once every notifier is a member of the group (none left over)."""
    settings = NotifierSettings()
    # Quiet: librdkafka's notices (log level 6) would land in the middle of the drill's report.
    admin = AdminClient(dict(kafka_config(settings.kafka, **{"client.id": "orderly-drill", "log_level": 4})))
    status = group_status(admin, settings.group_id(), {})
    running = {name for name in processes if kind_of(name) == "notifier"}
    members = [m.client_id for m in status.members]
    if sorted(members) != sorted(running):
        return set()  # a rebalance is under way, or a dead member is not evicted yet
    return {m.client_id for m in status.members if m.assignment}


def active_loms_relays(processes: dict[str, ProcessState]) -> set[str]:
    """The relay holding the advisory lock, from PostgreSQL's lock table."""
    settings = LomsSettings()

    async def holder_port() -> int | None:
        conn = await asyncpg.connect(settings.postgres.dsn())
        try:
            port: int | None = await conn.fetchval(
                """SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                   WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = $1 AND l.objid::bigint = $2""",
                RELAY_LOCK_KEY >> 32,
                RELAY_LOCK_KEY & 0xFFFFFFFF,
            )
            return port
        finally:
            await conn.close()

    port = asyncio.run(holder_port())
    name = owner(pid_of_connection(port, settings.postgres.port), processes) if port else None
    return {name} if name else set()


# What a role probe raises while the server it asks is restarting or the group is rebalancing.
PROBE_ERRORS = (
    httpx.HTTPError,
    OSError,
    ValueError,
    KeyError,
    psutil.Error,
    KafkaException,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

# Kinds that run as one active process and standbys, and how to tell which is which.
ROLE_PROBES: dict[str, Callable[[dict[str, ProcessState]], set[str]]] = {
    "ingest-worker": active_ingest_workers,
    "notifier": active_notifiers,
    "loms-relay": active_loms_relays,
}


class LocalFaults:
    """Faults for a system on this machine: processes under `orderly up`'s supervisor, servers of the local stack."""

    name = "local"

    def __init__(self, stack: Stack, target: Target, supervisor: Supervisor | None = None) -> None:
        self.stack = stack
        self.target = target
        self.supervisor = supervisor or Supervisor()
        self.kills: dict[str, int] = {}  # process → kills by the drill (each expected to cost one restart)
        self.restarts_before: dict[str, int] | None = None

    def plan(self, pipelines: Sequence[Pipeline]) -> list[Fault]:
        """Every kind of process killed (active and standby where there are both), then every server restarted."""
        per_pipeline: list[list[Fault]] = []
        for pipeline in pipelines:
            kills: list[Fault] = []
            names = pipeline.processes(self.target.specs)
            for kind in dict.fromkeys(kind_of(name) for name in names):
                members = [name for name in names if kind_of(name) == kind]
                roles = ["active", "standby"] if kind in ROLE_PROBES and len(members) > 1 else [None]
                kills += [Kill(kind, role, pipeline.name) for role in roles]
            per_pipeline.append(kills)
        # Round robin over the pipelines, so each has load flowing between two of its own faults.
        faults: list[Fault] = [f for turn in zip_longest_all(per_pipeline) for f in turn]
        servers: dict[str, list[Pipeline]] = {}
        for pipeline in pipelines:
            for server in pipeline.servers():
                servers.setdefault(server, []).append(pipeline)
        for server, users in servers.items():
            used = {name for pipeline in users for name in pipeline.processes(self.target.specs)}
            ports = tuple(s.http_port for s in self.target.specs if s.name in used and s.http_port)
            faults.append(Restart(server, tuple(p.name for p in users), ports))
        return faults

    def begin(self) -> str | None:
        """Note each process's restart count; returns why process faults cannot be injected, if they cannot."""
        try:
            self.restarts_before = {name: p.restarts for name, p in self.supervisor.status().items()}
        except (httpx.HTTPError, ValueError, KeyError) as error:
            return f"no supervisor answers on {self.supervisor.url} ({type(error).__name__}): is `orderly up` running?"
        return None

    async def inject(self, fault: Fault) -> FaultRecord:
        if isinstance(fault, Kill):
            return await asyncio.to_thread(self._kill, fault)
        return await self._restart(fault)

    def unplanned_restarts(self, processes: Sequence[str]) -> dict[str, int]:
        """Restarts the supervisor counted beyond the drill's own kills, per process (those that crashed)."""
        if self.restarts_before is None:
            return {}
        try:
            now = self.supervisor.status()
        except httpx.HTTPError:
            return {}
        extra = {}
        for name in processes:
            if name in now:
                delta = now[name].restarts - self.restarts_before.get(name, 0) - self.kills.get(name, 0)
                if delta > 0:
                    extra[name] = delta
        return extra

    # --- processes ---------------------------------------------------------------------------------------------
    def _choose(self, fault: Kill, processes: dict[str, ProcessState]) -> str | None:
        members = sorted(name for name in processes if kind_of(name) == fault.kind)
        if fault.role is None:
            return members[0] if members else None
        probe = ROLE_PROBES[fault.kind]
        deadline = time.monotonic() + ROLE_WITHIN_S
        while True:
            with contextlib.suppress(*PROBE_ERRORS):  # a probe's server may be starting up; ask again
                active = probe(processes)
                if active:
                    chosen = sorted(active if fault.role == "active" else set(members) - active)
                    return chosen[0] if chosen else None
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
            with contextlib.suppress(httpx.HTTPError):
                processes = self.supervisor.status()

    def _kill(self, fault: Kill) -> FaultRecord:
        def record(injected: bool, recovered: bool, detail: str, back: float | None = None) -> FaultRecord:
            return FaultRecord(fault.title, (fault.pipeline,), injected, recovered, detail, back)

        try:
            processes = self.supervisor.status()
        except httpx.HTTPError as error:
            return record(False, False, f"not injected: the supervisor does not answer ({type(error).__name__})")
        name = self._choose(fault, processes)
        if name is None or processes[name].pid is None:
            return record(False, False, f"not injected: no {fault.role or 'running'} {fault.kind} found")
        old = processes[name]
        assert old.pid is not None
        os.kill(old.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self.kills[name] = self.kills.get(name, 0) + 1
        deadline = killed_at + BACK_WITHIN_S
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                now = self.supervisor.status().get(name)
                fresh = now is not None and now.pid not in (None, old.pid) and now.state == "running"
                if now is not None and fresh and self._probe_answers(name, now):
                    back = time.monotonic() - killed_at
                    return record(True, True, f"{name}: pid {old.pid} → {now.pid}, back in {back:.1f} s", back)
            time.sleep(0.1)
        return record(True, False, f"{name}: pid {old.pid} killed, not back within {BACK_WITHIN_S:.0f} s")

    def _probe_answers(self, name: str, state: ProcessState) -> bool:
        """An API is back when /readyz answers 200; a background process when /healthz does (a standby too)."""
        spec = next((s for s in self.target.specs if s.name == name), None)
        if spec is not None and spec.http_port:
            return answers(spec.http_port, "/readyz")
        port = state.probe_port or (spec.probe_port if spec else None)
        return answers(port, "/healthz") if port else True

    # --- servers -----------------------------------------------------------------------------------------------
    async def _restart(self, fault: Restart) -> FaultRecord:
        def record(injected: bool, recovered: bool, detail: str, back: float | None = None) -> FaultRecord:
            return FaultRecord(fault.title, fault.pipelines, injected, recovered, detail, back)

        [server] = self.stack.servers([fault.server])
        if server.pid() is None:
            return record(
                False, False, f"not injected: {fault.server} is not run by the local stack at {self.stack.root}"
            )
        began = time.monotonic()
        try:
            seconds = await asyncio.to_thread(self.stack.restart, fault.server)
        except StackError as error:
            return record(True, False, f"the restart failed: {error.line()}")
        ports = fault.api_ports
        while time.monotonic() < began + seconds + READY_WITHIN_S:
            if all(await asyncio.gather(*(asyncio.to_thread(answers, p, "/readyz") for p in ports))):
                back = time.monotonic() - began
                return record(True, True, f"server back in {seconds:.1f} s, APIs ready after {back:.1f} s", back)
            await asyncio.sleep(0.2)
        return record(True, False, f"server back in {seconds:.1f} s, APIs not ready within {READY_WITHIN_S:.0f} s")


def zip_longest_all(lists: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """[[a1, b1], [a2, b2], [a3]] from [[a1, a2, a3], [b1, b2]]: one from each list in turn."""
    longest = max((len(items) for items in lists), default=0)
    return [[items[i] for items in lists if i < len(items)] for i in range(longest)]


def rounds(faults: Sequence[Fault]) -> list[list[Fault]]:
    """The faults grouped into rounds that run at once: each pipeline meets one fault at a time, in plan order.

    A fault goes into the round after the last one that holds a fault of any pipeline it touches, so two pipelines'
    scripts run side by side while a server shared by several pipelines waits for all of them.
    """
    grouped: list[list[Fault]] = []
    last: dict[str, int] = {}
    for fault in faults:
        at = max((last[p] + 1 for p in fault.pipelines if p in last), default=0)
        if at == len(grouped):
            grouped.append([])
        grouped[at].append(fault)
        for pipeline in fault.pipelines:
            last[pipeline] = at
    return grouped
