"""`orderly status`: one screen with every process, every server and every pipeline of the running system.

Processes come from the supervisor's ``/status`` (state, PID, restarts, start time) and each process's own
``/healthz``; pipeline figures (throughput, lag, outbox age, dead letters) from the processes' own ``/metrics``.
Nothing here needs the supervisor: without it, each process shows as "not running" unless its probe answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from orderly.platform.processes import SUPERVISOR_PORT, ProcessSpec, port_offset
from orderly.platform.settings import InfraSettings
from orderly.stack.manager import Stack

PROBE_TIMEOUT_S = 1.5
THROUGHPUT_WINDOW_S = 1.0
LOOPBACK = "127.0.0.1"
URL_SCHEMES = {"postgres": "postgresql", "mariadb": "mysql", "rabbitmq": "amqp", "prometheus": "http"}

# What each pipeline counts as done work (the sum of a batch-size histogram), and where its figures live.
PIPELINES: dict[str, dict[str, str]] = {
    "ingest": {"done": "ingest-worker", "queue": "ingest", "dead": "ingest"},
    "sums": {"done": "sums-committer"},
    "items": {"done": "items-audit", "outbox": "items", "lag": "items", "dead": "items"},
    "loms": {"done": "loms-relay", "outbox": "loms", "lag": "notifier", "dead": "notifier"},
}


@dataclass
class ProcessStatus:
    name: str
    state: str
    pid: int | None
    restarts: int | None
    started_at: float | None
    health: str  # "ok", "down" (no answer) or the failing status
    role: str | None
    metrics_url: str | None

    @property
    def uptime_s(self) -> float | None:
        return None if self.started_at is None else max(time.time() - self.started_at, 0.0)


@dataclass
class ServerStatus:
    name: str
    ready: bool
    version: str
    port: int
    url: str


Sample = tuple[str, dict[str, str], float]


@dataclass
class Snapshot:
    supervisor: bool
    processes: list[ProcessStatus]
    servers: list[ServerStatus]
    pipelines: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        processes = []
        for p in self.processes:
            entry = {k: v for k, v in asdict(p).items() if k != "started_at"}
            entry["uptime_s"] = None if p.uptime_s is None else round(p.uptime_s, 1)
            processes.append(entry)
        return {
            "supervisor": self.supervisor,
            "processes": processes,
            "servers": [asdict(s) for s in self.servers],
            "pipelines": self.pipelines,
        }


def _started_at(value: object) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value).timestamp()
    return None


async def _supervised(client: httpx.AsyncClient, port: int) -> dict[str, dict[str, Any]] | None:
    """The supervisor's view by process name, or None when it does not answer."""
    try:
        response = await client.get(f"http://{LOOPBACK}:{port}/status")
        response.raise_for_status()
        return {entry["name"]: entry for entry in response.json()["processes"]}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


async def _health(client: httpx.AsyncClient, port: int) -> tuple[str, str | None]:
    try:
        response = await client.get(f"http://{LOOPBACK}:{port}/healthz")
    except httpx.HTTPError:
        return "down", None
    if response.status_code != 200:
        return f"unhealthy ({response.status_code})", None
    with contextlib.suppress(ValueError, AttributeError):
        return "ok", response.json().get("role")
    return "ok", None


async def _samples(client: httpx.AsyncClient, url: str) -> list[Sample]:
    try:
        response = await client.get(url)
        response.raise_for_status()
    except httpx.HTTPError:
        return []
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(response.text)
        if family.name.startswith("orderly_")
        for s in family.samples
    ]


async def _process(
    client: httpx.AsyncClient, spec: ProcessSpec, supervised: dict[str, dict[str, Any]] | None
) -> ProcessStatus:
    port = spec.probe_port
    health, role = await _health(client, port) if port else ("-", None)
    entry = (supervised or {}).get(spec.name)
    if entry is None:
        state = "not running" if health == "down" else ("unsupervised" if supervised is None else "unknown")
        return ProcessStatus(spec.name, state, None, None, None, health, role, _metrics_url(port))
    return ProcessStatus(
        name=spec.name,
        state=str(entry.get("state", "unknown")),
        pid=entry.get("pid"),
        restarts=entry.get("restarts"),
        started_at=_started_at(entry.get("started_at")),
        health=health,
        role=role,
        metrics_url=_metrics_url(port),
    )


def _metrics_url(port: int | None) -> str | None:
    return f"http://{LOOPBACK}:{port}/metrics" if port else None


def _values(samples: Iterable[Sample], name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [(lb, v) for n, lb, v in samples if n == name and all(lb.get(k) == want for k, want in labels.items())]


def _max(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    values = [v for _, v in _values(samples, name, **labels)]
    return max(values) if values else None


def _lag(samples: Iterable[Sample], service: str) -> float | None:
    """The lag of a consumer group: per partition the highest any member reports, summed over partitions."""
    per_partition: dict[str, float] = {}
    for labels, value in _values(samples, "orderly_consumer_lag", service=service):
        partition = labels.get("partition", "")
        per_partition[partition] = max(per_partition.get(partition, 0.0), value)
    return sum(per_partition.values()) if per_partition else None


def _done(samples: Iterable[Sample], batcher: str) -> float | None:
    values = [v for _, v in _values(samples, "orderly_batch_size_sum", service=batcher)]
    return sum(values) if values else None


def pipeline_figures(
    before: Sequence[Sample], after: Sequence[Sample], seconds: float
) -> dict[str, dict[str, float | None]]:
    """Per pipeline: throughput (items per second between two readings), lag, outbox and dead letters."""
    figures: dict[str, dict[str, float | None]] = {}
    for pipeline, where in PIPELINES.items():
        done_before, done_after = _done(before, where["done"]), _done(after, where["done"])
        row: dict[str, float | None] = {
            "throughput_per_s": (
                None
                if done_before is None or done_after is None or seconds <= 0
                else round(max(done_after - done_before, 0.0) / seconds, 1)
            )
        }
        if "queue" in where:
            row["queue_depth"] = _max(after, "orderly_queue_depth", service=where["queue"])
            row["daemon_lag_events"] = _max(after, "orderly_daemon_lag_events")
        if "lag" in where:
            row["consumer_lag"] = _lag(after, where["lag"])
        if "outbox" in where:
            row["outbox_pending"] = _max(after, "orderly_outbox_pending", service=where["outbox"])
            row["outbox_oldest_age_s"] = _max(after, "orderly_outbox_oldest_age_seconds", service=where["outbox"])
        if "dead" in where:
            row["dead_letters"] = _max(after, "orderly_dead_letters", service=where["dead"])
        figures[pipeline] = row
    return figures


def server_statuses(settings: InfraSettings) -> list[ServerStatus]:
    stack = Stack(settings=settings)
    statuses = []
    for server in stack.status():
        port = next(iter(server.ports.values()))
        scheme = URL_SCHEMES.get(server.name, server.name)
        statuses.append(ServerStatus(server.name, server.ready, server.version, port, f"{scheme}://{LOOPBACK}:{port}"))
    return statuses


async def _read_metrics(client: httpx.AsyncClient, processes: Sequence[ProcessStatus]) -> list[Sample]:
    urls = [p.metrics_url for p in processes if p.metrics_url and p.health == "ok"]
    batches = await asyncio.gather(*(_samples(client, url) for url in urls))
    return [sample for batch in batches for sample in batch]


async def snapshot(
    specs: Sequence[ProcessSpec],
    settings: InfraSettings,
    *,
    previous: tuple[float, list[Sample]] | None = None,
    supervisor_port: int | None = None,
    read_servers: Callable[[InfraSettings], list[ServerStatus]] = server_statuses,
) -> tuple[Snapshot, tuple[float, list[Sample]]]:
    """Everything at once. Throughput needs two readings: against ``previous`` (``--watch``), else 1 s apart."""
    running = [spec for spec in specs if not spec.init]
    servers = asyncio.create_task(asyncio.to_thread(read_servers, settings))
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
        supervised = await _supervised(client, supervisor_port or SUPERVISOR_PORT + port_offset())
        processes = list(await asyncio.gather(*(_process(client, spec, supervised) for spec in running)))
        if previous is None:
            previous = (time.monotonic(), await _read_metrics(client, processes))
            await asyncio.sleep(THROUGHPUT_WINDOW_S)
        reading = (time.monotonic(), await _read_metrics(client, processes))
    figures = pipeline_figures(previous[1], reading[1], reading[0] - previous[0])
    return Snapshot(supervised is not None, processes, await servers, figures), reading


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _figure(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}{unit}" if value != int(value) else f"{int(value):,}{unit}"


def render(snap: Snapshot) -> Group:
    """The one screen: processes, servers, pipelines."""
    supervisor = "supervisor: running" if snap.supervisor else "[yellow]supervisor: not running[/]"
    processes = Table(title=f"processes ({supervisor})", title_justify="left")
    for column in ("process", "state", "pid", "uptime", "restarts", "health", "role", "metrics"):
        processes.add_column(column)
    for p in snap.processes:
        health = "[green]ok[/]" if p.health == "ok" else f"[red]{p.health}[/]"
        state = p.state if p.state == "running" else f"[yellow]{p.state}[/]"
        processes.add_row(
            p.name, state, str(p.pid or "-"), _duration(p.uptime_s), "-" if p.restarts is None else str(p.restarts),
            health, p.role or "-", p.metrics_url or "-",
        )  # fmt: skip
    servers = Table(title="servers", title_justify="left")
    for column in ("server", "version", "port", "ready", "url"):
        servers.add_column(column)
    for s in snap.servers:
        servers.add_row(s.name, s.version, str(s.port), "[green]yes[/]" if s.ready else "[red]no[/]", s.url)
    pipelines = Table(title="pipelines (from the processes' /metrics)", title_justify="left")
    for column in ("pipeline", "throughput", "queue/lag", "outbox pending", "outbox age", "dead letters"):
        pipelines.add_column(column)
    for name, row in snap.pipelines.items():
        lag_parts = []
        if "queue_depth" in row:
            lag_parts += [f"queue {_figure(row['queue_depth'])}", f"daemon {_figure(row['daemon_lag_events'])}"]
        if "consumer_lag" in row:
            lag_parts.append(f"consumer {_figure(row['consumer_lag'])}")
        pipelines.add_row(
            name,
            _figure(row["throughput_per_s"], "/s"),
            ", ".join(lag_parts) or "-",
            _figure(row.get("outbox_pending")),
            _figure(row.get("outbox_oldest_age_s"), " s"),
            _figure(row.get("dead_letters")),
        )
    return Group(processes, servers, pipelines)


def show(*, watch: bool, as_json: bool, interval: float) -> None:
    """Print the snapshot once (tables or JSON), or keep it on screen, refreshed every ``interval`` seconds."""
    from orderly.runner import service_processes

    specs, settings = service_processes(), InfraSettings()
    console = Console(highlight=False)
    if as_json:
        snap, _ = asyncio.run(snapshot(specs, settings))
        print(json.dumps(snap.to_json(), indent=2))
        return
    if not watch:
        console.print(render(asyncio.run(snapshot(specs, settings))[0]))
        return

    async def live() -> None:
        reading: tuple[float, list[Sample]] | None = None
        with Live(console=console, screen=False, auto_refresh=False) as screen:
            while True:
                snap, reading = await snapshot(specs, settings, previous=reading)
                screen.update(render(snap), refresh=True)
                await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(live())
