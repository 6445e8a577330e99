"""The loms API as a client sees it, with the relay and a notifier running: contract, events, graceful stops."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.loms_support import Loms, notifier_lines, prepare
from tests.plumbing import Namespace, Processes, Spawned, free_port, wait_until


@pytest.fixture(scope="module")
async def loms(namespace: Namespace) -> Loms:
    return await prepare(namespace, "api")


@pytest.fixture(scope="module")
def running(loms: Loms) -> Iterator[dict[str, Any]]:
    procs = Processes()
    port = free_port()
    api = procs.start("loms", "api", "--port", str(port), env=loms.env)
    relay = procs.start("loms", "relay", env=loms.env)
    notifier = procs.start("notifier", "--instance", "only", env=loms.env)
    api.wait_http_ready(port)
    yield {"url": f"http://127.0.0.1:{port}", "api": api, "relay": relay, "notifier": notifier}
    procs.stop_all()


@pytest.fixture
def client(running: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running["url"], timeout=10) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/order/create", {"items": [{"sku": 1001, "count": 1}]}, "user"),
        ("/order/create", {"user": "seven", "items": [{"sku": 1001, "count": 1}]}, "user"),
        ("/order/create", {"user": 0, "items": [{"sku": 1001, "count": 1}]}, "user"),
        ("/order/create", {"user": 1, "items": []}, "items"),
        ("/order/create", {"user": 1}, "items"),
        ("/order/create", {"user": 1, "items": [{"sku": -5, "count": 1}]}, "items[0].sku"),
        ("/order/create", {"user": 1, "items": [{"sku": 1001, "count": 0}]}, "items[0].count"),
        ("/order/create", {"user": 1, "items": [{"sku": 1001, "count": 1}, {"sku": 1001}]}, "items[1].count"),
        ("/order/pay", {}, "orderID"),
        ("/order/pay", {"orderID": "1"}, "orderID"),
        ("/order/cancel", {"orderID": -1}, "orderID"),
        ("/order/info", {"orderID": 1.5}, "orderID"),
        ("/stock/info", {"sku": None}, "sku"),
    ],
)
def test_bad_input_is_answered_400_naming_the_field(
    client: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert field in [f["field"] for f in response.json()["fields"]]


def test_unknown_order_and_sku_are_404(client: httpx.Client) -> None:
    for path in ("/order/pay", "/order/cancel", "/order/info"):
        response = client.post(path, json={"orderID": 987654321})
        assert response.status_code == 404
        assert response.json()["fields"][0]["field"] == "orderID"
    assert client.post("/stock/info", json={"sku": 987654321}).status_code == 404


def test_a_disallowed_transition_is_409_with_the_current_status(client: httpx.Client) -> None:
    order_id = client.post("/order/create", json={"user": 5, "items": [{"sku": 1003, "count": 1}]}).json()["orderID"]
    assert client.post("/order/cancel", json={"orderID": order_id}).status_code == 200
    for path in ("/order/pay", "/order/cancel"):
        response = client.post(path, json={"orderID": order_id})
        assert response.status_code == 409
        assert response.json()["status"] == "cancelled"


async def test_every_transition_reaches_the_notifier_in_order(running: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=running["url"], timeout=10) as client:

        async def call(path: str, body: dict[str, Any]) -> Any:
            response = await client.post(path, json=body)
            assert response.status_code == 200, response.text
            return response.json()

        before = (await call("/stock/info", {"sku": 1004}))["count"]
        create = {"user": 9, "items": [{"sku": 1004, "count": 2}, {"sku": 1005, "count": 1}]}
        paid = (await call("/order/create", create))["orderID"]
        assert (await call("/stock/info", {"sku": 1004}))["count"] == before - 2
        await call("/order/pay", {"orderID": paid})
        cancelled = (await call("/order/create", create))["orderID"]
        await call("/order/cancel", {"orderID": cancelled})
        failed = (await call("/order/create", {"user": 9, "items": [{"sku": 2002, "count": 2}]}))["orderID"]
        assert (await call("/stock/info", {"sku": 1004}))["count"] == before - 2
        assert await call("/order/info", {"orderID": paid}) == {"status": "payed", "user": 9, "items": create["items"]}
        assert (await call("/order/info", {"orderID": failed}))["status"] == "failed"

    expected = {
        paid: ["new", "awaiting payment", "payed"],
        cancelled: ["new", "awaiting payment", "cancelled"],
        failed: ["new", "failed"],
    }
    notifier: Spawned = running["notifier"]

    def statuses() -> dict[int, list[str]]:
        seen: dict[int, list[str]] = {}
        for line in notifier_lines(notifier):
            if line["order_id"] in expected:
                seen.setdefault(line["order_id"], []).append(line["status"])
        return seen

    await wait_until(lambda: statuses() == expected, within=30, what=f"events of {expected}")
    line = next(x for x in notifier_lines(notifier) if x["order_id"] == failed)
    assert set(line) >= {"order_id", "status", "occurred_at", "partition", "offset", "instance"}
    assert line["instance"] == "only"


def test_api_relay_and_notifier_exit_0_within_10_s_on_sigterm_and_sigint(
    loms: Loms, running: dict[str, Any], processes: Processes
) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        port = free_port()
        api = processes.start("loms", "api", "--port", str(port), env=loms.env)
        relay = processes.start("loms", "relay", env=loms.env)
        notifier = processes.start("notifier", "--instance", f"stop-{sig.name}", env=loms.env)
        api.wait_http_ready(port)
        for process in (api, relay, notifier):
            started = time.monotonic()
            process.signal(sig)
            assert process.proc.wait(15) == 0, process.errors[-5:]
            assert time.monotonic() - started < 10
