"""The items processes as a user runs them (api, relay, audit), over HTTP, with servers failing underneath."""

from __future__ import annotations

import time
from typing import Any

import httpx
import nats
import pytest

from orderly.items.deadletters import dead_letters_waiting
from orderly.items.settings import ItemsSettings
from tests.integration.items.support import items_env, items_settings
from tests.plumbing import Namespace, Processes, ScratchStack, Spawned, free_port, wait_until


def migrate(processes: Processes, settings: ItemsSettings) -> None:
    step = processes.start("items", "migrate", env=items_env(settings))
    assert step.proc.wait(60) == 0, "\n".join(step.errors[-20:])


def start_api(processes: Processes, settings: ItemsSettings) -> tuple[Spawned, str]:
    port = free_port()
    api = processes.start("items", "api", "--port", str(port), env=items_env(settings))
    api.wait_http_ready(port)
    return api, f"http://127.0.0.1:{port}"


def start_workers(processes: Processes, settings: ItemsSettings) -> list[Spawned]:
    env = items_env(settings)
    return [processes.start("items", "relay", env=env), processes.start("items", "audit", env=env)]


class Changes:
    """Makes changes through the API and counts the events they must produce."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client, self.events, self.ids = client, 0, list[int]()

    async def create(self, name: str) -> None:
        response = await self.client.post("/item/create", params={"campaignId": 1}, json={"name": name})
        assert response.status_code == 200, response.text
        self.ids.append(response.json()["id"])
        self.events += 1

    async def update(self, n: int) -> None:
        item_id = self.ids[n % len(self.ids)]
        response = await self.client.patch(
            "/item/update", params={"id": item_id, "campaignId": 1}, json={"name": f"u{n}", "description": str(n)}
        )
        assert response.status_code == 200, response.text
        self.events += 1

    async def reprioritize(self) -> None:
        response = await self.client.patch(
            "/item/reprioritize", params={"id": self.ids[-1], "campaignId": 1}, json={"newPriority": 1}
        )
        assert response.status_code == 200, response.text
        self.events += len(response.json()["priorities"])

    async def remove(self) -> None:
        response = await self.client.delete("/item/remove", params={"id": self.ids.pop(), "campaignId": 1})
        assert response.status_code == 200, response.text
        self.events += 1


async def logs_total(client: httpx.AsyncClient) -> int | None:
    try:
        response = await client.get("/logs", params={"limit": 1})
    except httpx.HTTPError:
        return None
    return int(response.json()["meta"]["total"]) if response.status_code == 200 else None


async def all_logs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = (await client.get("/logs", params={"limit": 1000, "offset": len(found) + 1})).json()["logs"]
        found.extend(page)
        if len(page) < 1000:
            return found


async def assert_logged_exactly(client: httpx.AsyncClient, expected: int, *, within: float) -> None:
    async def arrived() -> bool:
        return await logs_total(client) == expected

    await wait_until(arrived, within=within, what=f"{expected} events in /logs (have {await logs_total(client)})")
    events = await all_logs(client)
    assert len(events) == expected
    assert len({e["eventId"] for e in events}) == expected


async def test_every_change_appears_exactly_once_in_logs(namespace: Namespace, processes: Processes) -> None:
    settings = items_settings(await namespace.settings("e2e-once"))
    migrate(processes, settings)
    _, url = start_api(processes, settings)
    start_workers(processes, settings)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        changes = Changes(client)
        for n in range(20):
            await changes.create(f"item-{n}")
        for n in range(20):
            await changes.update(n)
        await changes.reprioritize()
        for _ in range(5):
            await changes.remove()
        await assert_logged_exactly(client, changes.events, within=60)


async def test_changes_committed_before_the_api_was_killed_reach_the_logs(
    namespace: Namespace, processes: Processes
) -> None:
    """The events are in the outbox with their commits, so a dead API (and no relay running yet) loses nothing."""
    settings = items_settings(await namespace.settings("e2e-killed"))
    migrate(processes, settings)
    api, url = start_api(processes, settings)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        changes = Changes(client)
        for n in range(10):
            await changes.create(f"item-{n}")
    api.kill()  # the API and its granian worker, as a crash of the whole process would
    _, url = start_api(processes, settings)
    start_workers(processes, settings)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await assert_logged_exactly(client, changes.events, within=60)


@pytest.mark.slow
async def test_no_change_is_lost_when_nats_restarts_and_clickhouse_stops_for_five_seconds(
    namespace: Namespace, processes: Processes, scratch_stack: Any
) -> None:
    scratch: ScratchStack = scratch_stack("items-faults", "nats", "clickhouse")
    scratch.up()
    base = await namespace.settings("e2e-faults")
    private = scratch.settings
    settings = items_settings(
        base.model_copy(
            update={
                "nats": private.nats.model_copy(update={"stream_prefix": base.nats.stream_prefix}),
                "clickhouse": private.clickhouse.model_copy(update={"database": base.clickhouse.database}),
            }
        )
    )
    migrate(processes, settings)
    _, url = start_api(processes, settings)
    relay, audit = start_workers(processes, settings)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        changes = Changes(client)
        for n in range(10):
            await changes.create(f"item-{n}")

        scratch.down("nats")
        for n in range(10):
            await changes.update(n)  # writes go on: their events wait in the outbox
        scratch.up("nats")
        await changes.reprioritize()
        for n in range(10, 20):
            await changes.update(n)

        scratch.down("clickhouse")
        stopped_at, n = time.monotonic(), 20
        while time.monotonic() - stopped_at < 5:  # a steady trickle of writes for the whole outage
            await changes.update(n)
            n += 1
        scratch.up("clickhouse")
        await changes.remove()

        await assert_logged_exactly(client, changes.events, within=120)
    assert any("clickhouse unavailable" in line for line in audit.errors), "the outage was seen by the audit"
    assert any("clickhouse reachable again" in line for line in audit.errors)
    for process in (relay, audit):  # both rode through the restarts: the same processes, still running
        assert process.proc.poll() is None, "\n".join(process.errors[-20:])
    assert not any("parked" in line for line in audit.errors), "an outage is waited out, never dead-lettered"
    nc = await nats.connect(settings.nats.url())
    try:
        assert await dead_letters_waiting(nc.jetstream(), settings.dead_letter_stream_name) == 0
    finally:
        await nc.close()
