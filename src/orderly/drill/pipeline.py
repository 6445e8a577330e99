"""What every pipeline of the drill provides: its processes and servers, a bounded load, and checks afterwards."""

from __future__ import annotations

import asyncio
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx

from orderly.drill.clients import Pace, Tally
from orderly.platform.processes import ProcessSpec
from orderly.platform.settings import OrderlySettings

# A settings field names the resource; the local stack names the server that provides it.
SERVER_OF_FIELD = {"mysql": "mariadb"}
GRACE_S = 30.0  # after the load stops, a client retries what it began at most this long
RESOURCE_FIELDS = ("postgres", "mysql", "redis", "rabbitmq", "nats", "clickhouse", "kafka")


def kind_of(process: str) -> str:
    """A process's kind: its name without the instance number (``ingest-worker-2`` → ``ingest-worker``)."""
    return re.sub(r"-\d+$", "", process)


@dataclass(frozen=True)
class Target:
    """Where the drill finds the system: each process's port on loopback, and the copies of what processes print."""

    specs: list[ProcessSpec]
    output: Path
    host: str = "127.0.0.1"

    def url(self, process: str) -> str:
        [port] = [spec.http_port for spec in self.specs if spec.name == process and spec.http_port]
        return f"http://{self.host}:{port}"

    def urls(self, kind: str) -> list[str]:
        return [self.url(spec.name) for spec in self.specs if kind_of(spec.name) == kind and spec.http_port]


@dataclass
class Verdict:
    """One pipeline's result: every check with its evidence line."""

    pipeline: str
    evidence: list[str] = field(default_factory=list)
    ok: bool = True

    def check(self, condition: bool, evidence: str) -> bool:
        self.evidence.append(("ok   " if condition else "FAIL ") + evidence)
        self.ok = self.ok and condition
        return condition

    def note(self, evidence: str) -> None:
        """A line of evidence that is a count, not a condition."""
        self.evidence.append("     " + evidence)


class Tail:
    """The JSON lines a process printed after the drill began, read incrementally from `orderly up`'s copy."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""

    def read(self, must_have: str) -> list[dict[str, Any]]:
        """The new complete lines that are JSON objects with the key ``must_have``."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        found = []
        needle = f'"{must_have}"'.encode()
        for line in lines:
            text = line.strip()
            if text.startswith(b"{") and needle in text:
                try:
                    record = json.loads(text)
                except ValueError:
                    continue  # a line cut by kill -9
                if isinstance(record, dict):
                    found.append(record)
        return found


class Pipeline(ABC):
    """A pipeline under the drill. Subclasses run their clients' loop and check their promise afterwards."""

    name: ClassVar[str]
    process_prefixes: ClassVar[tuple[str, ...]]  # process names that belong to the pipeline start with one of these
    settings_classes: ClassVar[tuple[type[OrderlySettings], ...]]

    def __init__(self, target: Target, *, tag: str) -> None:
        self.target = target
        self.tag = tag  # unique to this drill run: marks every key, name and number it sends
        self.tally = Tally()
        self.give_up_at = float("inf")  # after the load stops, a client still finishes (retries) what it began

    @classmethod
    def processes(cls, specs: Iterable[ProcessSpec]) -> list[str]:
        return [s.name for s in specs if not s.init and s.name.startswith(cls.process_prefixes)]

    @classmethod
    def servers(cls) -> list[str]:
        """The local stack's servers the pipeline's processes use (from the resources in their settings)."""
        fields = {name for settings in cls.settings_classes for name in settings.model_fields}
        return [SERVER_OF_FIELD.get(name, name) for name in RESOURCE_FIELDS if name in fields]

    async def prepare(self, http: httpx.AsyncClient) -> None:
        """Note where things stand before the load begins."""

    async def load(self, http: httpx.AsyncClient, stop: asyncio.Event, *, clients: int, rate: float) -> None:
        """``clients`` concurrent clients, each at most ``rate`` requests a second, until ``stop`` is set."""

        async def grace() -> None:
            await stop.wait()
            self.give_up_at = time.monotonic() + GRACE_S

        await asyncio.gather(grace(), *(self.client(http, index, stop, Pace(rate)) for index in range(clients)))

    @abstractmethod
    async def client(self, http: httpx.AsyncClient, index: int, stop: asyncio.Event, pace: Pace) -> None:
        """One careful client's loop."""

    @abstractmethod
    async def check(self, http: httpx.AsyncClient, verdict: Verdict, *, within: float) -> None:
        """After the load: the pipeline's promise, each part a line of evidence in ``verdict``."""
