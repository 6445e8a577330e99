"""The HTTP contract of every items endpoint, over real PostgreSQL, Redis and ClickHouse."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orderly.items.settings import ItemsOptions
from tests.integration.items.support import api_client, create, migrated
from tests.plumbing import Namespace

NOT_FOUND = {"code": 3, "message": "errors.item.notFound", "details": {}}


async def test_create_returns_the_item_with_the_next_priority(client: httpx.AsyncClient) -> None:
    first = await create(client, "first", description="about it")
    second = await create(client, "second")
    assert set(first) == {"id", "campaignId", "name", "description", "priority", "removed", "createdAt"}
    assert first["campaignId"] == 1
    assert first["name"] == "first"
    assert first["description"] == "about it"
    assert first["removed"] is False
    assert second["description"] is None
    assert second["priority"] == first["priority"] + 1


async def test_create_trims_the_name(client: httpx.AsyncClient) -> None:
    assert (await create(client, "  padded  "))["name"] == "padded"


async def test_create_for_an_unknown_campaign_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/item/create", params={"campaignId": 999}, json={"name": "x"})
    assert response.status_code == 404
    assert response.json() == {"code": 3, "message": "errors.campaign.notFound", "details": {}}


async def test_update_changes_name_and_keeps_description_when_omitted(client: httpx.AsyncClient) -> None:
    item = await create(client, "old", description="kept")
    response = await client.patch("/item/update", params={"id": item["id"], "campaignId": 1}, json={"name": "new"})
    assert response.status_code == 200
    assert response.json() == {**item, "name": "new"}
    response = await client.patch(
        "/item/update", params={"id": item["id"], "campaignId": 1}, json={"name": "new", "description": None}
    )
    assert response.json()["description"] is None


async def test_remove_is_soft_and_a_second_remove_is_404(client: httpx.AsyncClient) -> None:
    item = await create(client, "doomed")
    params = {"id": item["id"], "campaignId": 1}
    response = await client.delete("/item/remove", params=params)
    assert response.status_code == 200
    assert response.json() == {"id": item["id"], "campaignId": 1, "removed": True}
    again = await client.delete("/item/remove", params=params)
    assert again.status_code == 404
    assert again.json() == NOT_FOUND
    listed = (await client.get("/items/list", params={"limit": 1000})).json()["items"]
    assert [i["removed"] for i in listed if i["id"] == item["id"]] == [True], "the row stays, flagged"


async def test_reprioritize_moves_every_item_at_or_above_up_by_one(client: httpx.AsyncClient) -> None:
    a = await create(client, "a")
    b = await create(client, "b")
    c = await create(client, "c")
    response = await client.patch(
        "/item/reprioritize", params={"id": c["id"], "campaignId": 1}, json={"newPriority": a["priority"]}
    )
    assert response.status_code == 200
    priorities = {p["id"]: p["priority"] for p in response.json()["priorities"]}
    assert priorities[c["id"]] == a["priority"]
    assert priorities[a["id"]] == a["priority"] + 1
    assert priorities[b["id"]] == b["priority"] + 1
    listed = (await client.get("/items/list", params={"limit": 1000})).json()["items"]
    order = [i["id"] for i in listed]
    assert order.index(c["id"]) < order.index(a["id"]) < order.index(b["id"])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/item/update", {"name": "x"}),
        ("DELETE", "/item/remove", None),
        ("PATCH", "/item/reprioritize", {"newPriority": 1}),
    ],
)
async def test_a_missing_row_is_404_with_the_contract_body(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    item = await create(client, "elsewhere")
    for params in ({"id": 10**12, "campaignId": 1}, {"id": item["id"], "campaignId": 2}):
        response = await client.request(method, path, params=params, json=body)
        assert response.status_code == 404
        assert response.json() == NOT_FOUND


async def test_list_is_ordered_by_priority_with_meta_and_defaults(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await create(client, f"listed-{n}")
    everything = (await client.get("/items/list", params={"limit": 1000})).json()
    priorities = [i["priority"] for i in everything["items"]]
    assert priorities == sorted(priorities)
    meta = everything["meta"]
    assert meta["total"] == len(everything["items"])
    assert meta["removed"] == sum(i["removed"] for i in everything["items"])
    default = (await client.get("/items/list")).json()
    assert default["meta"]["limit"] == 10
    assert default["meta"]["offset"] == 1
    assert default["items"] == everything["items"][:10]
    second = (await client.get("/items/list", params={"limit": 2, "offset": 2})).json()
    assert second["items"] == everything["items"][1:3]


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "field"),
    [
        ("POST", "/item/create", {"campaignId": "one"}, {"name": "x"}, "campaignId"),
        ("POST", "/item/create", {}, {"name": "x"}, "campaignId"),
        ("POST", "/item/create", {"campaignId": 1}, {"name": "   "}, "name"),
        ("POST", "/item/create", {"campaignId": 1}, {"name": ""}, "name"),
        ("POST", "/item/create", {"campaignId": 1}, {"name": "x" * 256}, "name"),
        ("POST", "/item/create", {"campaignId": 1}, {"name": 5}, "name"),
        ("POST", "/item/create", {"campaignId": 1}, {}, "name"),
        ("POST", "/item/create", {"campaignId": 1}, {"name": "x", "description": "d" * 2001}, "description"),
        ("POST", "/item/create", {"campaignId": 1}, b'{"name": ', "body"),
        ("POST", "/item/create", {"campaignId": 1}, b"", "body"),
        ("PATCH", "/item/update", {"id": "1.5", "campaignId": 1}, {"name": "x"}, "id"),
        ("PATCH", "/item/update", {"campaignId": 1}, {"name": "x"}, "id"),
        ("PATCH", "/item/update", {"id": 1, "campaignId": 1}, {"name": " "}, "name"),
        ("PATCH", "/item/update", {"id": 1, "campaignId": 1}, {"description": "d"}, "name"),
        ("DELETE", "/item/remove", {"id": "x", "campaignId": 1}, None, "id"),
        ("DELETE", "/item/remove", {"id": 1}, None, "campaignId"),
        ("PATCH", "/item/reprioritize", {"id": 1, "campaignId": 1}, {"newPriority": 0}, "newPriority"),
        ("PATCH", "/item/reprioritize", {"id": 1, "campaignId": 1}, {"newPriority": "high"}, "newPriority"),
        ("PATCH", "/item/reprioritize", {"id": 1, "campaignId": 1}, {}, "newPriority"),
        ("GET", "/items/list", {"limit": "ten"}, None, "limit"),
        ("GET", "/items/list", {"limit": 0}, None, "limit"),
        ("GET", "/items/list", {"offset": 0}, None, "offset"),
        ("GET", "/logs", {"itemId": "x"}, None, "itemId"),
        ("GET", "/logs", {"limit": 100_000}, None, "limit"),
    ],
)
async def test_bad_input_is_400_naming_the_field(  # noqa: PLR0917 - one parameter per table column
    client: httpx.AsyncClient,
    method: str,
    path: str,
    params: dict[str, Any],
    body: dict[str, Any] | bytes | None,
    field: str,
) -> None:
    content = body if isinstance(body, bytes) else None
    json_body = None if isinstance(body, bytes) else body
    response = await client.request(method, path, params=params, json=json_body, content=content)
    assert response.status_code == 400, response.text
    assert field in [f["field"] for f in response.json()["fields"]]


@pytest.mark.parametrize("path", ["/items/list", "/logs"])
async def test_an_offset_over_the_configured_cap_is_refused_naming_offset(client: httpx.AsyncClient, path: str) -> None:
    cap = ItemsOptions().list_max_offset
    assert (await client.get(path, params={"offset": cap})).status_code == 200
    for offset in (cap + 1, 2**31):
        response = await client.get(path, params={"offset": offset})
        assert response.status_code == 400, response.text
        assert [f["field"] for f in response.json()["fields"]] == ["offset"]


async def test_reprioritize_moves_only_the_run_in_its_way_and_keeps_the_order(namespace: Namespace) -> None:
    settings = await migrated(await namespace.settings("reprio-run"))
    async with api_client(settings) as client:
        a, b, c, d = [await create(client, name) for name in "abcd"]
        # Open a gap: d goes far up, so c is the last of the run 1..3.
        far = d["priority"] + 10
        moved = await client.patch(
            "/item/reprioritize", params={"id": d["id"], "campaignId": 1}, json={"newPriority": far}
        )
        assert [p["id"] for p in moved.json()["priorities"]] == [d["id"]], "nothing stands at a free priority"
        response = await client.patch(
            "/item/reprioritize", params={"id": c["id"], "campaignId": 1}, json={"newPriority": a["priority"]}
        )
        changed = {p["id"]: p["priority"] for p in response.json()["priorities"]}
        assert changed == {c["id"]: a["priority"], a["id"]: a["priority"] + 1, b["id"]: b["priority"] + 1}
        listed = (await client.get("/items/list", params={"limit": 10})).json()["items"]
    assert [i["id"] for i in listed] == [c["id"], a["id"], b["id"], d["id"]]
    assert listed[-1]["priority"] == far, "the item past the gap kept its priority"


async def test_reprioritize_that_would_move_more_than_the_cap_is_refused_and_changes_nothing(
    namespace: Namespace,
) -> None:
    settings = await migrated(await namespace.settings("reprio-cap"), reprioritize_max_moves=2)
    async with api_client(settings) as client:
        items = [await create(client, name) for name in "abcd"]
        before = (await client.get("/items/list", params={"limit": 10})).json()["items"]
        response = await client.patch(
            "/item/reprioritize", params={"id": items[-1]["id"], "campaignId": 1}, json={"newPriority": 1}
        )
        assert response.status_code == 400, response.text
        assert [f["field"] for f in response.json()["fields"]] == ["newPriority"]
        after = (await client.get("/items/list", params={"limit": 10})).json()["items"]
        assert after == before
        within = await client.patch(
            "/item/reprioritize", params={"id": items[-1]["id"], "campaignId": 1}, json={"newPriority": 2}
        )
        assert within.status_code == 200, "two items in the way: at the cap, allowed"
        assert len(within.json()["priorities"]) == 3
