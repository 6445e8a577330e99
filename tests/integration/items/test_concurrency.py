"""Row locks and the priority lock under concurrent requests, on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx

from orderly.items.settings import ItemsSettings
from orderly.platform.settings import InfraSettings
from tests.integration.items.support import api_client, create, migrated
from tests.plumbing import Namespace, wait_until


async def test_fifty_concurrent_creates_get_distinct_consecutive_priorities(namespace: Namespace) -> None:
    settings = await migrated(await namespace.settings("creates"))
    async with api_client(settings) as client:
        created = await asyncio.gather(*(create(client, f"racer-{n}") for n in range(50)))
    assert sorted(item["priority"] for item in created) == list(range(1, 51))
    assert len({item["id"] for item in created}) == 50


async def test_concurrent_patches_on_one_row_serialize_without_lost_update(
    client: httpx.AsyncClient, items: ItemsSettings
) -> None:
    """Half the PATCHes set a description, half keep it (read-modify-write under the row lock).

    In commit order (the outbox id order) every keeping update must carry the description the previous update left;
    without the lock a keeping update could write back a description it read before a concurrent change.
    """
    item = await create(client, "contended", description="d-start")
    params = {"id": item["id"], "campaignId": 1}

    async def patch(n: int) -> None:
        body = {"name": f"n-{n}", "description": f"d-{n}"} if n % 2 else {"name": f"n-{n}"}
        response = await client.patch("/item/update", params=params, json=body)
        assert response.status_code == 200, response.text

    await asyncio.gather(*(patch(n) for n in range(40)))
    conn = await asyncpg.connect(items.postgres.dsn())
    try:
        rows = await conn.fetch(
            "SELECT payload::text FROM items_outbox WHERE (payload->>'itemId')::bigint = $1 ORDER BY id", item["id"]
        )
        final = await conn.fetchrow("SELECT name, description FROM items WHERE id = $1", item["id"])
    finally:
        await conn.close()
    events = [json.loads(r[0]) for r in rows]
    updates = [e for e in events if e["kind"] == "updated"]
    assert len(updates) == 40
    description = "d-start"
    for event in updates:
        n = int(event["name"].removeprefix("n-"))
        if n % 2:
            description = f"d-{n}"
        assert event["description"] == description, f"update n-{n} lost a concurrent change"
    assert (final["name"], final["description"]) == (updates[-1]["name"], description)


async def test_update_waits_for_the_row_lock(client: httpx.AsyncClient, items: ItemsSettings) -> None:
    """While another transaction holds the row (FOR UPDATE), a PATCH blocks on it and then applies after it."""
    item = await create(client, "locked")
    holder = await asyncpg.connect(items.postgres.dsn())
    observer = await asyncpg.connect(items.postgres.dsn())
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM items WHERE id = $1 FOR UPDATE", item["id"])
        await holder.execute("UPDATE items SET description = 'by holder' WHERE id = $1", item["id"])
        patch = asyncio.create_task(
            client.patch("/item/update", params={"id": item["id"], "campaignId": 1}, json={"name": "after"})
        )

        async def patch_waits_for_lock() -> bool:
            waiting = await observer.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'"""
            )
            return bool(waiting == 1)

        await wait_until(patch_waits_for_lock, within=10, what="the PATCH to wait for the row lock")
        assert not patch.done()
        await tx.commit()
        response = await patch
    finally:
        await holder.close()
        await observer.close()
    assert response.status_code == 200
    assert response.json()["name"] == "after"
    assert response.json()["description"] == "by holder", "the PATCH read the row after the holder committed"


async def test_reprioritize_and_creates_interleave_without_duplicate_priorities(namespace: Namespace) -> None:
    infra: InfraSettings = await namespace.settings("reprio")
    settings = await migrated(infra)
    async with api_client(settings) as client:
        seed = [await create(client, f"seed-{n}") for n in range(5)]

        async def move(item_id: int) -> None:
            response = await client.patch(
                "/item/reprioritize", params={"id": item_id, "campaignId": 1}, json={"newPriority": 2}
            )
            assert response.status_code == 200, response.text

        await asyncio.gather(*(create(client, f"new-{n}") for n in range(10)), *(move(i["id"]) for i in seed))
        listed = (await client.get("/items/list", params={"limit": 100})).json()["items"]
    priorities = [i["priority"] for i in listed]
    assert len(listed) == 15
    assert len(set(priorities)) == 15, f"two items share a priority: {priorities}"
