"""`orderly demo`: a scripted tour of every headline promise against the running system, PASS or FAIL with evidence.

It talks to the processes `orderly up` runs, over HTTP as a user would, and reads what they print from the copies
`orderly up` keeps in ``.stack/run/<process>.log``. When the system is not running it starts it and stops it after.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from orderly.attach import SystemNotReadyError, attached, poll
from orderly.platform.processes import ProcessSpec

console = Console(highlight=False)


@dataclass(frozen=True)
class Urls:
    """Where the running system's APIs answer, taken from its process specs (so ``ORDERLY_UP__PORT_OFFSET`` holds)."""

    ingest: str
    sums: tuple[str, ...]
    items: str
    loms: str

    @classmethod
    def of(cls, specs: Iterable[ProcessSpec]) -> Urls:
        apis = {spec.name: f"http://127.0.0.1:{spec.http_port}" for spec in specs if spec.http_port}
        sums = tuple(url for name, url in sorted(apis.items()) if name.startswith("sums-"))
        return cls(ingest=apis["ingest-api"], sums=sums, items=apis["items-api"], loms=apis["loms-api"])


@dataclass
class Verdict:
    promise: str
    ok: bool = True
    evidence: list[str] = field(default_factory=list)

    def check(self, condition: bool, evidence: str) -> None:
        self.evidence.append(("ok   " if condition else "FAIL ") + evidence)
        self.ok = self.ok and condition


class OutputFiles:
    """Lines a process printed after a given moment, read from `orderly up`'s copy of its output."""

    def __init__(self, folder: Path, names: Iterable[str]) -> None:
        self.paths = {name: folder / f"{name}.log" for name in names}
        self.start = {name: (p.stat().st_size if p.exists() else 0) for name, p in self.paths.items()}

    def records(self, must_have: str) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for name, path in self.paths.items():
            if not path.exists():
                continue
            with path.open("rb") as file:
                file.seek(self.start[name])
                for line in file.read().decode("utf-8", "replace").splitlines():
                    text = line.strip()
                    if text.startswith("{") and f'"{must_have}"' in text:
                        try:
                            found.append((name, json.loads(text)))
                        except json.JSONDecodeError:
                            continue
        return found


async def ingest_in_acceptance_order(http: httpx.AsyncClient, urls: Urls, out: Path) -> Verdict:
    verdict = Verdict("ingest: 1,000 concurrent requests come out of the daemon in acceptance order")
    files = OutputFiles(out, ["ingest-daemon"])
    timings: dict[str, tuple[float, float]] = {}
    in_flight = asyncio.Semaphore(50)  # 50 concurrent clients, so "sent" is when a request really leaves

    async def send(n: int) -> None:
        async with in_flight:
            sent = time.monotonic()
            response = await http.get(f"{urls.ingest}/ingest", params={"n": [n, -n]})
            if response.status_code == 202:
                timings[response.json()["token"]] = (sent, time.monotonic())

    await asyncio.gather(*(send(n) for n in range(1, 1001)))
    verdict.check(len(timings) == 1000, f"{len(timings)}/1000 requests accepted (202)")

    await check_printed_in_order(verdict, files, timings, expected=1000)
    return verdict


async def check_printed_in_order(
    verdict: Verdict, files: OutputFiles, timings: dict[str, tuple[float, float]], *, expected: int, note: str = ""
) -> None:
    """Every accepted token reaches the daemon's output, and none before one accepted before it was sent."""
    first_seen: dict[str, int] = {}

    async def all_out() -> bool:
        first_seen.clear()
        first_seen.update(daemon_first_seen(files))
        return all(token in first_seen for token in timings)

    arrived = await poll(all_out, within=30, every=0.25)
    verdict.check(arrived, f"{sum(t in first_seen for t in timings)}/{expected} tokens in the daemon's output")
    violations, pairs = order_violations(timings, first_seen)
    verdict.check(violations == 0, f"{violations} order violations over {pairs} happens-before pairs{note}")


def daemon_first_seen(files: OutputFiles) -> dict[str, int]:
    """Each token's first event id in the daemon's output (the output is at-least-once: repeats dropped)."""
    events: dict[int, dict[str, Any]] = {}
    for _, record in files.records("event_id"):
        events.setdefault(record["event_id"], record)
    first_seen: dict[str, int] = {}
    for event_id in sorted(events):
        first_seen.setdefault(str(events[event_id]["token"]), event_id)
    return first_seen


def order_violations(timings: dict[str, tuple[float, float]], first_seen: dict[str, int]) -> tuple[int, int]:
    """(violations, pairs): a request accepted before another was sent must come out first."""
    by_response = sorted(timings.items(), key=lambda kv: kv[1][1])
    by_send = sorted(timings.items(), key=lambda kv: kv[1][0])
    violations, pairs, best, i = 0, 0, -1, 0
    for token, (sent, _) in by_send:
        while i < len(by_response) and by_response[i][1][1] < sent:
            best = max(best, first_seen.get(by_response[i][0], -1))
            i += 1
        pairs += i
        if token in first_seen and best > first_seen[token]:
            violations += 1
    return violations, pairs


async def ingest_over_stomp(http: httpx.AsyncClient, urls: Urls, out: Path) -> Verdict:
    verdict = Verdict("ingest over STOMP: RECEIPTs and 202s share one order; a bad frame is parked, the line goes on")
    from orderly.ingest.client import StompSender
    from orderly.ingest.settings import IngestSettings

    settings = IngestSettings()
    files = OutputFiles(out, ["ingest-daemon"])
    timings: dict[str, tuple[float, float]] = {}

    def stomp_client(first: int) -> None:
        with StompSender(settings) as sender:
            for n in range(first, first + 25):
                sent = time.monotonic()
                token = sender.send([n, -n])
                timings[str(token)] = (sent, time.monotonic())

    async def http_client(first: int) -> None:
        for n in range(first, first + 25):
            sent = time.monotonic()
            response = await http.get(f"{urls.ingest}/ingest", params={"n": [n, -n]})
            if response.status_code == 202:
                timings[response.json()["token"]] = (sent, time.monotonic())

    workers = OutputFiles(out, ["ingest-worker-1", "ingest-worker-2"])

    def send_bad_frame() -> None:
        with StompSender(settings) as sender:
            sender.send_frame("[1]", {})  # no token header: the broker takes it, the worker parks it

    await asyncio.to_thread(send_bad_frame)
    await asyncio.gather(
        *(asyncio.to_thread(stomp_client, 10_000 + 100 * c) for c in range(4)),
        *(http_client(20_000 + 100 * c) for c in range(4)),
    )
    verdict.check(len(timings) == 200, f"{len(timings)}/200 accepted (100 RECEIPTs over STOMP, 100 202s over HTTP)")
    await check_printed_in_order(verdict, files, timings, expected=200, note=", both protocols")
    parked = [r for _, r in workers.records("reason") if str(r.get("reason", "")).startswith("missing token")]
    verdict.check(
        len(parked) == 1, f"the frame without a token was dead-lettered: {parked[0]['reason'] if parked else 'no'}"
    )
    return verdict


async def sums_applied_once(http: httpx.AsyncClient, urls: Urls) -> Verdict:
    verdict = Verdict("sums: 100 duplicate requests over 3 instances are applied once")
    before = (await http.get(f"{urls.sums[0]}/sum")).json()["sum"]
    key = f"demo-{uuid.uuid4()}"
    answers = await asyncio.gather(
        *(
            http.post(f"{urls.sums[i % len(urls.sums)]}/sum", params={"number": 7}, headers={"Idempotency-Key": key})
            for i in range(100)
        )
    )
    codes = [a.status_code for a in answers]
    bodies = {a.text for a in answers if a.status_code == 200}
    verdict.check(set(codes) <= {200, 409}, f"answers: {codes.count(200)} x 200, {codes.count(409)} x 409")
    verdict.check(len(bodies) == 1, f"every 200 carries the same body: {sorted(bodies)}")
    replay = await http.post(f"{urls.sums[-1]}/sum", params={"number": 7}, headers={"Idempotency-Key": key})
    verdict.check(replay.headers.get("Idempotent-Replayed") == "true", "a later repeat is a replay")
    after = (await http.get(f"{urls.sums[1 % len(urls.sums)]}/sum")).json()["sum"]
    verdict.check(after - before == 7, f"sum {before} → {after} (grew by {after - before}, expected 7)")
    return verdict


async def items_cache_and_change_log(http: httpx.AsyncClient, urls: Urls) -> Verdict:
    verdict = Verdict("items: an update invalidates the cache and its event shows in /logs")
    base = urls.items
    name = f"demo {uuid.uuid4().hex[:8]}"
    created = await http.post(f"{base}/item/create", params={"campaignId": 1}, json={"name": name})
    verdict.check(created.status_code == 200, f"created item {created.json().get('id')}")
    item = created.json()
    page = {"limit": 1, "offset": 1}
    total = (await http.get(f"{base}/items/list", params=page)).json()["meta"]["total"]
    page["offset"] = total  # the newest item has the highest priority: the last row
    await http.get(f"{base}/items/list", params=page)
    cached = await http.get(f"{base}/items/list", params=page)
    verdict.check(
        cached.headers.get("X-Cache") == "hit", f"second read of the page: X-Cache {cached.headers.get('X-Cache')}"
    )
    renamed = f"{name} (renamed)"
    update = await http.patch(f"{base}/item/update", params={"id": item["id"], "campaignId": 1}, json={"name": renamed})
    verdict.check(update.status_code == 200, "updated the item's name")
    fresh = await http.get(f"{base}/items/list", params=page)
    names = [row["name"] for row in fresh.json()["items"]]
    verdict.check(renamed in names, f"the next read shows the new name (X-Cache {fresh.headers.get('X-Cache')})")

    async def logged() -> bool:
        logs = (await http.get(f"{base}/logs", params={"itemId": item["id"], "limit": 10})).json()
        return len(logs.get("logs", [])) >= 2

    verdict.check(
        await poll(logged, within=20, every=0.25), "create and update are in /logs (ClickHouse, through NATS)"
    )
    return verdict


async def loms_events_in_order(http: httpx.AsyncClient, urls: Urls, out: Path) -> Verdict:
    verdict = Verdict("loms: 200 orders' events reach the notifiers in per-order order, 2 of 3 notifiers active")
    files = OutputFiles(out, ["notifier-1", "notifier-2", "notifier-3"])
    base = urls.loms
    rng = random.Random(7)  # noqa: S311 - a repeatable demo, not security
    expected: dict[int, list[str]] = {}

    async def order(n: int) -> None:
        created = await http.post(
            f"{base}/order/create", json={"user": n + 1, "items": [{"sku": 1001 + n % 5, "count": 1}]}
        )
        order_id = created.json()["orderID"]
        action = rng.choice(["pay", "cancel"])
        await http.post(f"{base}/order/{action}", json={"orderID": order_id})
        status = (await http.post(f"{base}/order/info", json={"orderID": order_id})).json()["status"]
        expected[order_id] = ["new", status] if status == "failed" else ["new", "awaiting payment", status]

    await asyncio.gather(*(order(n) for n in range(200)))
    verdict.check(len(expected) == 200, f"{len(expected)} orders created and paid or cancelled")
    seen: dict[int, list[tuple[int, int, str]]] = {}
    instances: set[str] = set()

    async def delivered() -> bool:
        seen.clear()
        unique: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, record in files.records("order_id"):
            if record.get("order_id") in expected and "partition" in record:
                unique[str(record.get("event_id"))] = (name, record)
        for name, record in unique.values():
            instances.add(name)
            seen.setdefault(record["order_id"], []).append((record["partition"], record["offset"], record["status"]))
        return all(len(seen.get(o, [])) >= len(statuses) for o, statuses in expected.items())

    verdict.check(
        await poll(delivered, within=30, every=0.25), f"events of {len(seen)}/200 orders printed by the notifiers"
    )
    wrong = [o for o, statuses in expected.items() if [s for *_, s in sorted(seen.get(o, []))] != statuses]
    verdict.check(not wrong, f"{len(wrong)} orders with events out of order (expected new → awaiting payment → end)")
    verdict.check(len(instances) == 2, f"notifiers that printed: {sorted(instances)} (2 partitions → 2 active)")
    return verdict


async def guarded(promise: str, check: Awaitable[Verdict]) -> Verdict:
    """A check that crashes is a FAIL with the error as its evidence, never a traceback."""
    try:
        return await check
    except Exception as error:
        return Verdict(promise, ok=False, evidence=[f"FAIL {type(error).__name__}: {error}"])


async def tour(urls: Urls, out: Path) -> list[Verdict]:
    # Requests wait for a free connection as long as they need: the demo measures order, not latency.
    timeout = httpx.Timeout(30, pool=None)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=64)) as http:
        return [
            await guarded("ingest", ingest_in_acceptance_order(http, urls, out)),
            await guarded("ingest over STOMP", ingest_over_stomp(http, urls, out)),
            await guarded("sums", sums_applied_once(http, urls)),
            await guarded("items", items_cache_and_change_log(http, urls)),
            await guarded("loms", loms_events_in_order(http, urls, out)),
        ]


def demo() -> int:
    started = time.monotonic()
    try:
        with attached(announce=console.print) as system:
            verdicts = asyncio.run(tour(Urls.of(system.specs), system.output))
    except SystemNotReadyError as error:
        console.print(f"[red]the system did not get ready ({error}); see .stack/run/up.log[/]")
        return 1
    for verdict in verdicts:
        console.print(
            f"[bold {'green' if verdict.ok else 'red'}]{'PASS' if verdict.ok else 'FAIL'}[/] {verdict.promise}"
        )
        for line in verdict.evidence:
            console.print(f"      {line}")
    passed = sum(v.ok for v in verdicts)
    console.print(f"{passed}/{len(verdicts)} promises passed in {time.monotonic() - started:.0f} s")
    return 0 if passed == len(verdicts) else 1
