"""ingest under the drill: real-time order and exactly-once, read from what the daemon printed.

Each request carries numbers unique to this run (a run marker times 10⁹ plus a sequence number), so its events can be
found in the daemon's output even when its answer never arrived. A request whose outcome is unknown is not retried as
itself: the client sends a new request, and the unknown one may show up at most once.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from orderly.attach import poll
from orderly.drill.clients import Outcome, Pace, call
from orderly.drill.pipeline import Pipeline, Tail, Target, Verdict
from orderly.ingest.settings import IngestSettings

SPAN = 10**9  # numbers of one run: marker * SPAN + sequence


@dataclass
class Sent:
    numbers: list[int]
    sent_at: float
    answered_at: float = 0.0
    token: str | None = None


class Ingest(Pipeline):
    name = "ingest"
    process_prefixes = ("ingest-",)
    settings_classes = (IngestSettings,)

    def __init__(self, target: Target, *, tag: str) -> None:
        super().__init__(target, tag=tag)
        self.url = target.url("ingest-api")
        self.marker = random.SystemRandom().randrange(10**6, 9 * 10**6)
        self.sequence = itertools.count(1)
        self.accepted: list[Sent] = []
        self.unknown: list[Sent] = []  # the token is known when the API said outcome_unknown
        self.output = Tail(target.output / "ingest-daemon.log")
        self.events: dict[int, dict[str, Any]] = {}  # event_id → event, this run's only, each once
        self.printed: list[int] = []  # event ids in the order the daemon first printed them

    def numbers(self) -> list[int]:
        seq = next(self.sequence)
        value = self.marker * SPAN + seq
        return [value, -value, value][: 1 + seq % 3]

    async def client(self, http: httpx.AsyncClient, index: int, stop: asyncio.Event, pace: Pace) -> None:  # noqa: ARG002 - clients share one sequence
        while not stop.is_set():
            await pace.wait()
            sent = Sent(numbers=self.numbers(), sent_at=time.monotonic())
            answer = await call(http, self.tally, "GET", f"{self.url}/ingest", params=[("n", n) for n in sent.numbers])
            sent.answered_at = time.monotonic()
            if answer.outcome is Outcome.OK:
                sent.token = str(answer.body()["token"])
                self.accepted.append(sent)
            elif answer.outcome in (Outcome.UNKNOWN, Outcome.SERVER_ERROR):
                token = answer.body().get("token")
                sent.token = str(token) if token else None
                self.unknown.append(sent)
            elif answer.outcome in (Outcome.UNAVAILABLE, Outcome.REFUSED):
                await asyncio.sleep(answer.retry_after())  # not queued: the next request is the retry

    def _collect(self) -> None:
        for event in self.output.read("token"):
            value = event.get("value")
            if not isinstance(value, int) or abs(value) // SPAN != self.marker:
                continue
            event_id = int(event["event_id"])
            if event_id not in self.events:  # the daemon prints at least once: a restart may repeat a batch
                self.events[event_id] = event
                self.printed.append(event_id)

    async def check(self, http: httpx.AsyncClient, verdict: Verdict, *, within: float) -> None:  # noqa: ARG002 - reads the daemon's output
        expected = {s.token for s in self.accepted if s.token}

        async def all_printed() -> bool:
            self._collect()
            return expected <= {str(e["token"]) for e in self.events.values()}

        arrived = await poll(all_printed, within=within)
        by_token: dict[str, list[dict[str, Any]]] = {}
        for event_id in sorted(self.events):
            by_token.setdefault(str(self.events[event_id]["token"]), []).append(self.events[event_id])
        missing = len(expected - set(by_token))
        verdict.check(
            arrived and not missing,
            f"{len(expected) - missing}/{len(expected)} accepted requests printed by the daemon",
        )
        self._exactly_once(verdict, by_token)
        self._in_order(verdict, by_token)

    def _exactly_once(self, verdict: Verdict, by_token: dict[str, list[dict[str, Any]]]) -> None:
        sent = {s.token: s for s in [*self.accepted, *self.unknown] if s.token}
        wrong = 0
        for token, events in by_token.items():
            numbers = [e["value"] for e in events]
            positions = [e["position"] for e in events]
            if positions != list(range(len(positions))) or (token in sent and numbers != sent[token].numbers):
                wrong += 1
        verdict.check(wrong == 0, f"{wrong} requests stored other than exactly once with their numbers in place")
        unknown_shown = sum(1 for s in self.unknown if s.token in by_token)
        untracked = len(set(by_token) - set(sent))
        without_token = sum(1 for s in self.unknown if s.token is None)
        verdict.check(
            untracked <= without_token,
            f"of {len(self.unknown)} requests with an unknown outcome, {unknown_shown + untracked} were stored"
            f" ({untracked} not traceable by token, at most {without_token} could be)",
        )

    def _in_order(self, verdict: Verdict, by_token: dict[str, list[dict[str, Any]]]) -> None:
        verdict.check(
            self.printed == sorted(self.printed), "the daemon printed events in event id order (repeats aside)"
        )
        place = {event_id: index for index, event_id in enumerate(self.printed)}
        first = {t: place[int(events[0]["event_id"])] for t, events in by_token.items()}
        last = {t: place[int(events[-1]["event_id"])] for t, events in by_token.items()}
        split = sum(1 for t in by_token if last[t] - first[t] != len(by_token[t]) - 1)
        verdict.check(split == 0, f"{split} requests with their events interleaved with another's")
        # If A's answer arrived before B was sent, all of A's events come out before any of B's.
        answered = sorted((s for s in self.accepted if s.token in by_token), key=lambda s: s.answered_at)
        answered_at = [s.answered_at for s in answered]
        latest, running = [], -1
        for s in answered:
            running = max(running, last[str(s.token)])
            latest.append(running)
        violations = pairs = 0
        for s in [*self.accepted, *self.unknown]:
            if s.token not in by_token:
                continue
            before = bisect.bisect_left(answered_at, s.sent_at)
            pairs += before
            if before and latest[before - 1] > first[str(s.token)]:
                violations += 1
        verdict.check(
            violations == 0, f"{violations} requests printed before one answered before they were sent ({pairs} pairs)"
        )
