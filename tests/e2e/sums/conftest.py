"""Real `orderly sums api` processes over the local MariaDB and Redis, spoken to over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from orderly.platform.settings import InfraSettings
from orderly.sums.cli import migrate_database
from tests.faults.sums_crash import KEY_VARIABLE
from tests.plumbing import Processes, Spawned, free_port, infra_env

CRASHING_MODULE = "tests.faults.sums_crash"


@dataclass
class Cluster:
    """Several API instances sharing one MySQL database and one Redis prefix."""

    settings: InfraSettings
    ports: list[int]
    spawned: list[Spawned]

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i % len(self.ports)]}"

    async def total(self, client: Http) -> int:
        response = await client.get(f"{self.url(0)}/sum")
        assert response.status_code == 200, response.text
        return int(response.json()["sum"])


@dataclass(frozen=True)
class Reply:
    status_code: int
    headers: CIMultiDict[str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Http:
    """A thin aiohttp client (httpx is CPU-bound at a few hundred requests/s on this shared machine)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        async with self.session.request(method, url, params=params, headers=headers) as response:
            return Reply(response.status, CIMultiDict(response.headers), await response.read())

    async def get(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("POST", url, **kwargs)


def start_cluster(
    processes: Processes,
    settings: InfraSettings,
    count: int = 3,
    *,
    crash_after_commit_key: str | None = None,
    **options: object,
) -> Cluster:
    """``count`` instances; with ``crash_after_commit_key`` they are the test-only crashing build (tests/faults)."""
    env = infra_env(settings) | {f"ORDERLY_SUMS__{name.upper()}": str(value) for name, value in options.items()}
    ports = [free_port() for _ in range(count)]
    if crash_after_commit_key is None:
        spawned = [processes.start("sums", "api", "--port", str(port), env=env) for port in ports]
    else:
        env[KEY_VARIABLE] = crash_after_commit_key
        spawned = [processes.start("--port", str(port), env=env, module=CRASHING_MODULE) for port in ports]
    for process, port in zip(spawned, ports, strict=True):
        process.wait_http_ready(port)
    return Cluster(settings=settings, ports=ports, spawned=spawned)


@pytest.fixture(scope="module")
async def sums_infra(infra: InfraSettings) -> InfraSettings:
    await migrate_database(infra.mysql)
    return infra


@pytest.fixture(scope="module")
def cluster(sums_infra: InfraSettings) -> Iterator[Cluster]:
    """Three instances shared by the tests of a module (each test uses its own keys and measures sum deltas)."""
    spawned = Processes()
    try:
        yield start_cluster(spawned, sums_infra)
    finally:
        spawned.stop_all()


@pytest.fixture
async def client() -> AsyncIterator[Http]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=256)) as session:
        yield Http(session)
