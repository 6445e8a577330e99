"""PostgreSQL restarting under items: the API answers 503 (never 500), relay and audit ride through, nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.items.test_change_log_e2e import all_logs, logs_total, migrate, start_api, start_workers
from tests.e2e.outage_load import run_load, wait_status
from tests.integration.items.support import items_settings
from tests.plumbing import Namespace, Processes, ScratchStack, wait_until

pytestmark = pytest.mark.slow


async def test_postgres_restart_under_load_gives_no_5xx_but_503_and_every_answered_create_is_logged_once(
    namespace: Namespace, processes: Processes, scratch_stack: Callable[..., ScratchStack]
) -> None:
    scratch = scratch_stack("items-pg", "postgres")
    await asyncio.to_thread(scratch.up)
    base = await namespace.settings("items-pgrestart")
    postgres = scratch.settings.postgres.model_copy(update={"database": base.postgres.database})
    settings = items_settings(base.model_copy(update={"postgres": postgres}))
    migrate(processes, settings)
    api, url = start_api(processes, settings)
    relay, audit = start_workers(processes, settings)

    created: list[int] = []

    async def step(http: httpx.AsyncClient, n: int) -> httpx.Response:
        if n % 3:
            return await http.get("/items/list", params={"limit": 5, "offset": 1 + n % 7})
        response = await http.post("/item/create", params={"campaignId": 1}, json={"name": f"item-{n}"})
        if response.status_code == 200:
            created.append(response.json()["id"])
        return response

    stop = asyncio.Event()
    load = asyncio.create_task(run_load(url, step, clients=8, max_requests=20_000, max_seconds=120, stop=stop))

    async def creates_beyond(count: int) -> bool:
        return len(created) >= count

    await wait_until(lambda: creates_beyond(20), within=30, what="creates flowing")
    await asyncio.to_thread(scratch.down, "postgres")
    ready = await wait_status(url, "/readyz", 503, within=10)
    assert ready.headers["retry-after"] == "1"
    assert ready.json()["checks"]["postgres"] is False
    await asyncio.to_thread(scratch.up, "postgres")
    await wait_status(url, "/readyz", 200, within=60)
    answered = len(created)
    await wait_until(lambda: creates_beyond(answered + 20), within=60, what="creates after the restart")
    stop.set()
    tally = await load
    assert tally.bad == [], tally.bad[:5]
    assert tally.transport_errors == 0
    assert tally.statuses[503] > 0, f"the restart produced no 503; the test proved nothing: {tally.statuses}"

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def all_logged() -> bool:
            return (await logs_total(client) or 0) >= len(created)

        await wait_until(all_logged, within=120, what=f"{len(created)} creates in /logs")
        events = await all_logs(client)
    assert len({e["eventId"] for e in events}) == len(events), "an event was logged twice"
    logged = [e["itemId"] for e in events if e["kind"] == "created"]
    assert set(created) <= set(logged)
    assert len(logged) == len(set(logged))
    for process in (api, relay, audit):
        assert process.proc.poll() is None, "\n".join(process.errors[-20:])
    assert sum("postgres unavailable" in line for line in relay.errors) >= 1
    assert any("postgres reachable again" in line for line in relay.errors)
    assert not any("Traceback" in line for line in relay.errors)
