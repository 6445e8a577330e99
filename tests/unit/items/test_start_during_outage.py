"""An API started while its servers are down starts anyway and answers 503 naming the dependency, never 500."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager

from orderly.items.app import create_app
from orderly.items.settings import ItemsSettings
from orderly.platform.settings import ClickHouseSettings, PostgresSettings, RedisSettings
from tests.plumbing import free_port


async def test_items_started_with_postgres_down_answers_503_and_is_not_ready() -> None:
    settings = ItemsSettings(
        postgres=PostgresSettings(port=free_port()),
        redis=RedisSettings(port=free_port()),
        clickhouse=ClickHouseSettings(port=free_port()),
    )
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://items") as client,
    ):
        ready = await client.get("/readyz")
        listed = await client.get("/items/list", params={"limit": 5})  # the fast path
        created = await client.post("/item/create", params={"campaignId": 1}, json={"name": "x"})
        removed = await client.delete("/item/remove", params={"id": 1, "campaignId": 1})  # FastAPI's route
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"postgres": False, "redis": False}
    for answer in (listed, created, removed):
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["dependency"] == "postgres"
        assert answer.json()["error"] == "dependency_unavailable"
