"""sums under the drill: exactly-once, as a careful client sees it.

Each client sends a new number under a new idempotency key and retries that key (on any instance, round robin)
until it gets a definite answer: 503, a refused or broken connection, a timeout or 409 (in progress) all mean "ask
again with the same key". Afterwards the total must have grown by exactly the sum of the numbers whose keys were
answered, and every answer of one key must carry the same body. The drill assumes it is the only writer of the sum
while it runs.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import ClassVar

import httpx

from orderly.drill.clients import Outcome, Pace, call
from orderly.drill.pipeline import Pipeline, Target, Verdict
from orderly.sums.settings import SumsSettings


class Sums(Pipeline):
    name = "sums"
    process_prefixes = ("sums-",)
    settings_classes: ClassVar[tuple[type[SumsSettings], ...]] = (SumsSettings,)

    def __init__(self, target: Target, *, tag: str) -> None:
        super().__init__(target, tag=tag)
        self.urls = target.urls("sums")
        self.rng = random.Random(tag)  # noqa: S311 - numbers for a drill, not secrets
        self.sequence = itertools.count(1)
        self.before: int | None = None
        self.applied: dict[str, int] = {}  # key → number, answered 200
        self.bodies: dict[str, set[bytes]] = {}
        self.pending: dict[str, int] = {}  # keys still without a definite answer
        self.rejected: dict[str, int] = {}  # keys answered 4xx other than 409: a drill bug or a broken promise

    async def total(self, http: httpx.AsyncClient, *, within: float) -> int | None:
        deadline = time.monotonic() + within
        for attempt in itertools.count():
            answer = await call(http, self.tally, "GET", f"{self.urls[attempt % len(self.urls)]}/sum")
            if answer.outcome is Outcome.OK:
                return int(answer.body()["sum"])
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(answer.retry_after())
        return None

    async def prepare(self, http: httpx.AsyncClient) -> None:
        self.before = await self.total(http, within=30)

    async def client(self, http: httpx.AsyncClient, index: int, stop: asyncio.Event, pace: Pace) -> None:
        attempt = index
        while not stop.is_set():
            await pace.wait()
            key = f"drill-{self.tag}-{next(self.sequence)}"
            number = self.rng.randint(1, 1000)
            self.pending[key] = number
            while key in self.pending and time.monotonic() < self.give_up_at:
                url = self.urls[attempt % len(self.urls)]
                attempt += 1
                answer = await call(
                    http, self.tally, "POST", f"{url}/sum", params={"number": number}, headers={"Idempotency-Key": key}
                )
                if answer.outcome is Outcome.OK and answer.response is not None:
                    self.applied[key] = self.pending.pop(key)
                    self.bodies.setdefault(key, set()).add(answer.response.content)
                    if self.rng.random() < 0.1:  # now and then, a repeat that must be a replay of the same body
                        self.pending[key] = number
                elif answer.outcome is Outcome.REJECTED and answer.status != 409:
                    self.rejected[key] = self.pending.pop(key)
                else:
                    await asyncio.sleep(answer.retry_after())

    async def check(self, http: httpx.AsyncClient, verdict: Verdict, *, within: float) -> None:
        verdict.check(not self.pending, f"{len(self.pending)} keys never got a definite answer")
        verdict.check(not self.rejected, f"{len(self.rejected)} keys refused with 4xx other than 409")
        repeats = sum(1 for bodies in self.bodies.values() if len(bodies) > 1)
        verdict.check(repeats == 0, f"{repeats} keys answered with two different bodies (a replay must be identical)")
        after = await self.total(http, within=within)
        if self.before is None or after is None:
            verdict.check(False, "could not read the sum before or after the load")
            return
        grown, expected = after - self.before, sum(self.applied.values())
        verdict.check(
            grown == expected,
            f"sum {self.before} → {after}: grew by {grown}, the {len(self.applied)} answered keys add up to {expected}",
        )
