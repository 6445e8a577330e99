"""loms + notifier under the drill: per-order chronology in what the notifiers printed, nothing lost.

Each client creates an order, then pays it, cancels it or leaves it. A create whose outcome is unknown is counted
apart (an order the drill cannot follow may exist); a pay or cancel is retried until the answer is definite (200, or
409 when an earlier attempt already changed the status). Afterwards each order's final status (``/order/info``) says
which events it must have had, and the notifiers' output must show each of them, in that order.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from orderly.attach import poll
from orderly.drill.clients import Answer, Outcome, Pace, call
from orderly.drill.pipeline import Pipeline, Tail, Target, Verdict, kind_of
from orderly.loms.domain import OrderStatus
from orderly.loms.settings import LomsSettings
from orderly.notifier.settings import NotifierSettings

SKUS = range(1001, 1011)


def history(final: str) -> list[str]:
    """The statuses an order went through, from its final status."""
    if final == OrderStatus.FAILED.value:
        return [OrderStatus.NEW.value, final]
    if final == OrderStatus.AWAITING_PAYMENT.value:
        return [OrderStatus.NEW.value, final]
    return [OrderStatus.NEW.value, OrderStatus.AWAITING_PAYMENT.value, final]


class Loms(Pipeline):
    name = "loms"
    process_prefixes = ("loms-", "notifier-")
    settings_classes = (LomsSettings, NotifierSettings)

    def __init__(self, target: Target, *, tag: str) -> None:
        super().__init__(target, tag=tag)
        self.url = target.url("loms-api")
        self.rng = random.Random(tag)  # noqa: S311 - a drill's choices, not secrets
        self.orders: list[int] = []
        self.lost_creates = 0
        self.unsettled = 0  # pays and cancels still without a definite answer when the drill gave up
        notifiers = [s.name for s in target.specs if kind_of(s.name) == "notifier"]
        self.outputs = [Tail(target.output / f"{name}.log") for name in notifiers]
        self.printed: dict[int, dict[str, dict[str, Any]]] = {}  # order → event_id → first line printed for it
        self.wanted: set[int] = set()  # the orders whose lines the check collects

    async def _send(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Answer:
        while True:
            answer = await call(http, self.tally, "POST", f"{self.url}{path}", json=body)
            if answer.outcome not in (Outcome.UNAVAILABLE, Outcome.REFUSED) or time.monotonic() > self.give_up_at:
                return answer
            await asyncio.sleep(answer.retry_after())

    async def client(self, http: httpx.AsyncClient, index: int, stop: asyncio.Event, pace: Pace) -> None:
        while not stop.is_set():
            await pace.wait()
            items = [{"sku": self.rng.choice(SKUS), "count": 1}]
            created = await self._send(http, "/order/create", {"user": 1 + index, "items": items})
            if created.outcome in (Outcome.UNKNOWN, Outcome.SERVER_ERROR):
                self.lost_creates += 1
            if created.outcome is not Outcome.OK:
                continue
            order_id = int(created.body()["orderID"])
            self.orders.append(order_id)
            action = self.rng.choice(["pay", "cancel", "leave"])
            if action == "leave":
                continue
            while True:  # a pay or cancel whose outcome is unknown is asked again: 409 then says it was applied
                answer = await self._send(http, f"/order/{action}", {"orderID": order_id})
                if answer.outcome in (Outcome.OK, Outcome.REJECTED):
                    break
                if time.monotonic() > self.give_up_at:
                    self.unsettled += 1
                    break

    async def _final_status(self, http: httpx.AsyncClient, order_id: int) -> str | None:
        answer = await self._send(http, "/order/info", {"orderID": order_id})
        return str(answer.body()["status"]) if answer.outcome is Outcome.OK else None

    def _collect(self) -> None:
        for output in self.outputs:
            for line in output.read("order_id"):
                if "partition" in line and line.get("order_id") in self.wanted:
                    self.printed.setdefault(line["order_id"], {}).setdefault(str(line.get("event_id")), line)

    async def check(self, http: httpx.AsyncClient, verdict: Verdict, *, within: float) -> None:
        self.give_up_at = time.monotonic() + within
        finals: dict[int, str | None] = {}
        for order_id in self.orders:
            finals[order_id] = await self._final_status(http, order_id)
        unread = [o for o, status in finals.items() if status is None]
        verdict.check(not unread, f"{len(finals) - len(unread)}/{len(finals)} orders' status read")
        verdict.check(self.unsettled == 0, f"{self.unsettled} pays or cancels never got a definite answer")
        expected = {o: history(status) for o, status in finals.items() if status is not None}
        self.wanted = set(expected)

        async def all_printed() -> bool:
            self._collect()
            return all(len(self.printed.get(o, {})) >= len(h) for o, h in expected.items())

        await poll(all_printed, within=within)
        lost = [o for o, h in expected.items() if len(self.printed.get(o, {})) < len(h)]
        verdict.check(not lost, f"{len(expected) - len(lost)}/{len(expected)} orders with every event printed")
        wrong = []
        for order_id, statuses in expected.items():
            lines = sorted(self.printed.get(order_id, {}).values(), key=lambda x: (x["partition"], x["offset"]))
            stamps = [line["occurred_at"] for line in lines]
            if order_id not in lost and ([line["status"] for line in lines] != statuses or stamps != sorted(stamps)):
                wrong.append(order_id)
        verdict.check(not wrong, f"{len(wrong)} orders with events out of order (new → awaiting payment → end)")
        verdict.note(f"{self.lost_creates} creates with an unknown outcome (not followed)")
