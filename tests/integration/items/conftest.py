from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from orderly.items.settings import ItemsSettings
from orderly.platform.settings import InfraSettings
from tests.integration.items.support import api_client, migrated


@pytest.fixture(scope="session")
async def items(infra: InfraSettings) -> ItemsSettings:
    """The items service's settings over this run's namespace, migrated once."""
    return await migrated(infra)


@pytest.fixture
async def client(items: ItemsSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(items) as c:
        yield c
