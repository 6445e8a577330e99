"""items under the drill: every answered change in /logs exactly once, and read-your-writes.

Each client creates one item of its own, then renames it again and again, each time to a name unique to this run.
After every answered rename the client reads the list page that holds its item (the item's place in the priority
order never changes: the drill only creates and renames) and must see the name it just wrote. A rename refused with
503 or a refused connection is retried with the same name; one whose outcome is unknown is not, and its name may show
in /logs at most once. Afterwards /logs must hold each answered change of each item exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from orderly.attach import poll
from orderly.drill.clients import Answer, Outcome, Pace, call
from orderly.drill.pipeline import Pipeline, Target, Verdict
from orderly.items.settings import ItemsSettings

CAMPAIGN = 1  # the campaign every migration creates
PAGE = 1000  # the largest page /items/list and /logs give
READ_WITHIN_S = 60.0  # a read after a write retries (503, refused) at most this long


@dataclass
class Owned:
    """One client's item: the changes answered 200, those whose outcome is unknown, the reads after each write."""

    item_id: int
    position: int  # 1-based place in /items/list
    answered: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


class Items(Pipeline):
    name = "items"
    process_prefixes = ("items-",)
    settings_classes = (ItemsSettings,)

    def __init__(self, target: Target, *, tag: str) -> None:
        super().__init__(target, tag=tag)
        self.url = target.url("items-api")
        self.owned: list[Owned] = []
        self.lost_creates = 0  # creates whose outcome is unknown: an item the drill cannot follow may exist
        self.reads = 0
        self.stale_reads: list[str] = []
        self.failed_reads = 0

    async def _write(
        self, http: httpx.AsyncClient, method: str, path: str, *, params: dict[str, int], name: str
    ) -> Answer:
        """Send until the answer is definite: 503 and a refused connection mean "not applied, send it again"."""
        while True:
            answer = await call(http, self.tally, method, f"{self.url}{path}", params=params, json={"name": name})
            if answer.outcome not in (Outcome.UNAVAILABLE, Outcome.REFUSED) or time.monotonic() > self.give_up_at:
                return answer
            await asyncio.sleep(answer.retry_after())

    async def _create(self, http: httpx.AsyncClient, index: int, stop: asyncio.Event) -> Owned | None:
        for attempt in itertools.count():
            if stop.is_set():
                return None
            name = f"drill-{self.tag}-{index}-create-{attempt}"
            answer = await self._write(http, "POST", "/item/create", params={"campaignId": CAMPAIGN}, name=name)
            if answer.outcome is Outcome.OK:
                item_id = int(answer.body()["id"])
                position = await self._find(http, item_id)
                if position is None:
                    return None
                owned = Owned(item_id, position, answered=[name])
                self.owned.append(owned)
                return owned
            if answer.outcome not in (Outcome.UNKNOWN, Outcome.SERVER_ERROR):
                return None
            self.lost_creates += 1  # it may exist; a new item under a new name is the retry
        return None

    async def _page(self, http: httpx.AsyncClient, *, limit: int, offset: int) -> dict[str, Any] | None:
        """One page of /items/list, retried while the service is unavailable (bounded)."""
        deadline = time.monotonic() + READ_WITHIN_S
        while time.monotonic() < deadline:
            answer = await call(
                http, self.tally, "GET", f"{self.url}/items/list", params={"limit": limit, "offset": offset}
            )
            if answer.outcome is Outcome.OK:
                return answer.body()
            await asyncio.sleep(answer.retry_after())
        return None

    async def _find(self, http: httpx.AsyncClient, item_id: int) -> int | None:
        """The item's 1-based place in the list: new items go last, so look from the end."""
        head = await self._page(http, limit=1, offset=1)
        if head is None:
            return None
        total = int(head["meta"]["total"])
        offset = max(1, total - PAGE + 1)
        page = await self._page(http, limit=PAGE, offset=offset)
        for place, row in enumerate((page or {}).get("items", [])):
            if row["id"] == item_id:
                return offset + place
        return None

    async def client(self, http: httpx.AsyncClient, index: int, stop: asyncio.Event, pace: Pace) -> None:
        owned = await self._create(http, index, stop)
        if owned is None:
            return
        for seq in itertools.count():
            if stop.is_set():
                return
            await pace.wait()
            name = f"drill-{self.tag}-{index}-{seq}"
            params = {"id": owned.item_id, "campaignId": CAMPAIGN}
            answer = await self._write(http, "PATCH", "/item/update", params=params, name=name)
            if answer.outcome is Outcome.OK:
                owned.answered.append(name)
                await self._read_back(http, owned, name)
            elif answer.outcome in (Outcome.UNKNOWN, Outcome.SERVER_ERROR):
                owned.unknown.append(name)

    async def _read_back(self, http: httpx.AsyncClient, owned: Owned, name: str) -> None:
        page = await self._page(http, limit=1, offset=owned.position)
        self.reads += 1
        if page is None:
            self.failed_reads += 1
            return
        rows = page.get("items", [])
        seen = rows[0]["name"] if rows and rows[0]["id"] == owned.item_id else None
        if seen != name:
            self.stale_reads.append(f"item {owned.item_id}: wrote {name!r}, read {seen!r}")

    async def _logs(self, http: httpx.AsyncClient, item_id: int) -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = []
        while True:
            answer = await call(
                http, self.tally, "GET", f"{self.url}/logs",
                params={"itemId": item_id, "limit": PAGE, "offset": len(found) + 1},
            )  # fmt: skip
            if answer.outcome is not Outcome.OK:
                return None
            page = answer.body().get("logs", [])
            found.extend(page)
            if len(page) < PAGE:
                return found

    async def check(self, http: httpx.AsyncClient, verdict: Verdict, *, within: float) -> None:
        verdict.check(bool(self.owned), f"{len(self.owned)} items created and renamed by the clients")
        made = self.reads - self.failed_reads
        verdict.check(
            made > 0 and not self.stale_reads,
            f"read-your-writes: {made - len(self.stale_reads)}/{made} reads after an answered write showed it"
            f"{self._first(self.stale_reads)}",
        )
        if self.failed_reads:
            verdict.note(f"{self.failed_reads} reads after a write got no answer within {READ_WITHIN_S:.0f} s")
        logged: dict[int, list[dict[str, Any]]] = {}

        async def all_logged() -> bool:
            for owned in self.owned:
                if owned.item_id in logged:
                    continue
                events = await self._logs(http, owned.item_id)
                names = {e["name"] for e in events or []}
                if events is None or not set(owned.answered) <= names:
                    return False
                logged[owned.item_id] = events
            return True

        arrived = await poll(all_logged, within=within, every=1.0)
        answered = sum(len(o.answered) for o in self.owned)
        got = sum(len(set(o.answered) & {e["name"] for e in logged.get(o.item_id, [])}) for o in self.owned)
        verdict.check(arrived, f"{got}/{answered} answered changes in /logs")
        problems: list[str] = []
        unknown_logged = 0
        for owned in self.owned:
            counts: dict[str, int] = {}
            for event in logged.get(owned.item_id, []):
                counts[event["name"]] = counts.get(event["name"], 0) + 1
            twice = [n for n in owned.answered if counts.get(n, 0) > 1]
            foreign = set(counts) - set(owned.answered) - set(owned.unknown)
            unknown_logged += sum(1 for n in owned.unknown if n in counts)
            twice += [n for n in owned.unknown if counts.get(n, 0) > 1]
            problems += [f"item {owned.item_id}: {n!r} logged {counts[n]} times" for n in twice]
            problems += [f"item {owned.item_id}: {n!r} logged but never sent" for n in foreign]
        verdict.check(not problems, f"{len(problems)} changes logged other than once{self._first(problems)}")
        unknown = sum(len(o.unknown) for o in self.owned)
        verdict.note(
            f"{unknown} renames with an unknown outcome, {unknown_logged} of them applied;"
            f" {self.lost_creates} creates with an unknown outcome"
        )

    @staticmethod
    def _first(problems: list[str]) -> str:
        return f"; first: {problems[0]}" if problems else ""
