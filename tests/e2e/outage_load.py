"""A bounded client load for outage tests: concurrent clients, each answer tallied by status, 503 bodies checked."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from tests.plumbing import wait_until

Step = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response | None]]


@dataclass
class Tally:
    """What the clients saw: answers by status, and any 5xx that is not a well-formed outage 503."""

    statuses: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)  # 5xx other than 503, 503 without Retry-After or dependency
    transport_errors: int = 0

    def record(self, response: httpx.Response) -> None:
        self.statuses[response.status_code] += 1
        if response.status_code == 503:
            body = response.json()
            if "retry-after" not in response.headers or not (body.get("dependency") or body.get("checks")):
                self.bad.append(f"503 without Retry-After or dependency: {response.text}")
        elif response.status_code >= 500:
            self.bad.append(f"{response.status_code}: {response.text}")

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors


async def run_load(
    url: str, step: Step, *, clients: int, max_requests: int, max_seconds: float, stop: asyncio.Event
) -> Tally:
    """``clients`` concurrent clients run ``step`` until ``stop`` is set or the count or time bound is reached.

    ``step`` makes one request (or a short sequence) and returns the last response for the tally (None: nothing
    to count). Each client has one connection, as separate users would."""
    tally = Tally()
    started = time.monotonic()
    issued = 0

    async def client() -> None:
        nonlocal issued
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            while not stop.is_set() and issued < max_requests and time.monotonic() - started < max_seconds:
                issued += 1
                try:
                    response = await step(http, issued)
                except httpx.TransportError:
                    tally.transport_errors += 1
                    continue
                if response is not None:
                    tally.record(response)

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally


async def wait_status(url: str, path: str, status: int, *, within: float) -> httpx.Response:
    """Poll ``GET path`` until it answers ``status``; fail after ``within`` seconds."""
    answered: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:

        async def answers() -> bool:
            try:
                response = await http.get(path)
            except httpx.TransportError:
                return False
            answered.append(response)
            return response.status_code == status

        await wait_until(answers, within=within, what=f"GET {path} answering {status}", interval=0.1)
    return answered[-1]
