"""Helpers shared by the items tests: settings over a namespace, a migrated database, an in-process API client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from orderly.items.app import create_app
from orderly.items.migrate import migrate
from orderly.items.settings import ItemsOptions, ItemsSettings
from orderly.platform.settings import InfraSettings
from tests.plumbing import infra_env


def items_settings(infra: InfraSettings, **options: Any) -> ItemsSettings:
    return ItemsSettings(
        postgres=infra.postgres,
        redis=infra.redis,
        nats=infra.nats,
        clickhouse=infra.clickhouse,
        items=ItemsOptions(**options),
    )


def items_env(settings: ItemsSettings) -> dict[str, str]:
    """ORDERLY_* variables for a child process: the resources plus the items options."""
    infra = InfraSettings(
        postgres=settings.postgres, redis=settings.redis, nats=settings.nats, clickhouse=settings.clickhouse
    )
    env = infra_env(infra)
    for key, value in settings.items.model_dump().items():
        env[f"ORDERLY_ITEMS__{key.upper()}"] = str(value)
    return env


async def migrated(infra: InfraSettings, **options: Any) -> ItemsSettings:
    settings = items_settings(infra, **options)
    await migrate(settings)
    return settings


@asynccontextmanager
async def api_client(settings: ItemsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (real PostgreSQL, Redis, ClickHouse) served in-process through ASGI."""
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://items") as client,
    ):
        yield client


async def create(client: httpx.AsyncClient, name: str, *, campaign_id: int = 1, **body: Any) -> dict[str, Any]:
    response = await client.post("/item/create", params={"campaignId": campaign_id}, json={"name": name, **body})
    assert response.status_code == 200, response.text
    item: dict[str, Any] = response.json()
    return item
