"""The /items/list cache: hit, miss, TTL expiry, invalidation after writes, the stale-refill race, and a Redis that
fails or hangs."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest

from orderly.items import service
from orderly.items.cache import ListCache, SingleFlight
from orderly.items.migrate import migrate
from orderly.items.settings import ItemsSettings
from orderly.platform.errors import OutcomeUnknownError
from orderly.platform.pools import postgres_pool, redis_client
from tests.integration.items.support import api_client, create, items_settings
from tests.plumbing import Namespace, ScratchStack, wait_until


@pytest.fixture
async def fresh(namespace: Namespace) -> ItemsSettings:
    """A migrated database of its own with a three-second cache TTL, so expiry can be observed."""
    from orderly.items.migrate import migrate

    settings = items_settings(await namespace.settings(f"cache{time.monotonic_ns()}"), cache_ttl_seconds=3)
    await migrate(settings)
    return settings


@pytest.fixture
async def own(namespace: Namespace) -> ItemsSettings:
    """A migrated database of its own (default TTL), so a page holds every item the test made."""
    from orderly.items.migrate import migrate

    settings = items_settings(await namespace.settings(f"flight{time.monotonic_ns()}"))
    await migrate(settings)
    return settings


@pytest.fixture
async def db(items: ItemsSettings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(items.postgres.dsn())
    yield conn
    await conn.close()


async def rename_behind_the_cache(conn: asyncpg.Connection, item_id: int, name: str) -> None:
    """Change a row without going through the service: the cache is not told."""
    await conn.execute("UPDATE items SET name = $2 WHERE id = $1", item_id, name)


def names(page: httpx.Response) -> dict[int, str]:
    return {i["id"]: i["name"] for i in page.json()["items"]}


async def test_second_list_is_served_from_the_cache(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    item = await create(client, "cached")
    params = {"limit": 1000}
    first = await client.get("/items/list", params=params)
    assert first.headers["X-Cache"] == "miss"
    await rename_behind_the_cache(db, item["id"], "changed behind the cache")
    second = await client.get("/items/list", params=params)
    assert second.headers["X-Cache"] == "hit"
    assert second.content == first.content, "a hit returns the stored page, not PostgreSQL's current rows"


async def test_each_limit_and_offset_is_a_page_of_its_own(client: httpx.AsyncClient) -> None:
    await create(client, "paged")
    assert (await client.get("/items/list", params={"limit": 3})).headers["X-Cache"] == "miss"
    assert (await client.get("/items/list", params={"limit": 3, "offset": 2})).headers["X-Cache"] == "miss"
    assert (await client.get("/items/list", params={"limit": 3})).headers["X-Cache"] == "hit"


async def test_cached_page_expires_after_its_ttl(fresh: ItemsSettings) -> None:
    async with api_client(fresh) as client, redis_client(fresh.redis) as redis:
        item = await create(client, "short-lived")
        assert (await client.get("/items/list")).headers["X-Cache"] == "miss"
        keys = [k async for k in redis.scan_iter(match=f"{fresh.cache_prefix}list:page:*")]
        assert len(keys) == 1
        assert 0 < await redis.pttl(keys[0]) <= 3000, "the page lives cache_ttl_seconds"
        conn = await asyncpg.connect(fresh.postgres.dsn())
        try:
            await rename_behind_the_cache(conn, item["id"], "after expiry")
        finally:
            await conn.close()
        assert names(await client.get("/items/list"))[item["id"]] == "short-lived"

        async def expired() -> bool:
            return not await redis.exists(keys[0])

        await wait_until(expired, within=10, what="the page to expire")
        after = await client.get("/items/list")
        assert after.headers["X-Cache"] == "miss"
        assert names(after)[item["id"]] == "after expiry"


async def test_default_ttl_is_one_minute(client: httpx.AsyncClient, items: ItemsSettings) -> None:
    await create(client, "minute")
    await client.get("/items/list", params={"limit": 7})
    async with redis_client(items.redis) as redis:
        [key] = [k async for k in redis.scan_iter(match=f"{items.cache_prefix}list:page:*:7:1")]
        assert 55_000 < await redis.pttl(key) <= 60_000


async def test_every_write_is_visible_in_the_next_list(client: httpx.AsyncClient) -> None:
    """Read-your-writes: each write's response comes after the invalidation, so the next list shows it."""
    params = {"limit": 1000}
    item = await create(client, "ryw")
    assert names(await client.get("/items/list", params=params))[item["id"]] == "ryw"
    await client.get("/items/list", params=params)  # now cached

    ident = {"id": item["id"], "campaignId": 1}
    await client.patch("/item/update", params=ident, json={"name": "ryw-2"})
    assert names(await client.get("/items/list", params=params))[item["id"]] == "ryw-2"

    await client.patch("/item/reprioritize", params=ident, json={"newPriority": 1})
    listed = (await client.get("/items/list", params=params)).json()["items"]
    assert listed[0]["id"] == item["id"]

    await client.delete("/item/remove", params=ident)
    listed = (await client.get("/items/list", params=params)).json()["items"]
    assert next(i for i in listed if i["id"] == item["id"])["removed"] is True

    other = await create(client, "late")
    assert other["id"] in names(await client.get("/items/list", params=params))


async def test_reader_that_loaded_before_a_write_cannot_refill_a_stale_page(items: ItemsSettings) -> None:
    """The reader reads PostgreSQL, a write commits and invalidates, then the reader stores its page: never served."""
    async with postgres_pool(items.postgres) as pool, redis_client(items.redis) as redis:
        cache = ListCache(redis, prefix=items.cache_prefix, ttl_seconds=60)
        item = await service.create_item(pool=pool, cache=cache, campaign_id=1, name="before", description=None)
        loaded, release = asyncio.Event(), asyncio.Event()

        async def pause_between_read_and_store() -> None:
            loaded.set()
            await release.wait()

        reader = asyncio.create_task(
            service.list_items(pool=pool, cache=cache, limit=1000, offset=1, after_load=pause_between_read_and_store)
        )
        await asyncio.wait_for(loaded.wait(), timeout=10)
        await service.update_item(
            pool=pool, cache=cache, item_id=item.id, campaign_id=1, name="after", description=None
        )
        release.set()
        stale_body, hit = await reader
        assert not hit
        assert b'"before"' in stale_body, "the paused reader did load the old row"

        body, _ = await service.list_items(pool=pool, cache=cache, limit=1000, offset=1)
        assert b'"after"' in body
        assert b'"before"' not in body
        body, hit = await service.list_items(pool=pool, cache=cache, limit=1000, offset=1)
        assert hit
        assert b'"after"' in body


async def test_list_still_answers_from_postgresql_when_redis_is_unreachable(items: ItemsSettings) -> None:
    broken = items.redis.model_copy(update={"port": 1})
    async with postgres_pool(items.postgres) as pool, redis_client(broken) as redis:
        cache = ListCache(redis, prefix=items.cache_prefix, ttl_seconds=60)
        body, hit = await service.list_items(pool=pool, cache=cache, limit=10, offset=1)
    assert not hit
    assert body.startswith(b'{"meta"')


async def test_concurrent_misses_of_one_page_share_one_postgresql_read(own: ItemsSettings) -> None:
    """Single flight: a burst of readers missing the same page under one generation costs one load and one store."""
    async with postgres_pool(own.postgres) as pool, redis_client(own.redis) as redis:
        cache = ListCache(redis, prefix=own.cache_prefix, ttl_seconds=60)
        await service.create_item(pool=pool, cache=cache, campaign_id=1, name="burst", description=None)
        flights: SingleFlight[bytes] = SingleFlight()
        loads, release = 0, asyncio.Event()

        async def count_and_hold() -> None:
            nonlocal loads
            loads += 1
            await release.wait()

        generation, _ = await cache.lookup(limit=999, offset=1)
        readers = [
            asyncio.create_task(
                service.list_items(
                    pool=pool, cache=cache, limit=999, offset=1, after_load=count_and_hold, flights=flights
                )
            )
            for _ in range(10)
        ]

        async def all_joined() -> bool:
            return flights.callers((generation, 999, 1)) == len(readers)

        await wait_until(all_joined, within=10, what="every reader to miss and join the load")
        release.set()
        answers = await asyncio.gather(*readers)
        assert loads == 1, "ten concurrent misses, one PostgreSQL read"
        assert [hit for _, hit in answers] == [False] * 10
        assert {body for body, _ in answers} == {answers[0][0]}
        assert b'"burst"' in answers[0][0]


async def test_a_shared_load_is_not_served_to_readers_that_start_after_a_write(own: ItemsSettings) -> None:
    """Single flight keys by generation: a reader after a write's response never joins a load begun before it."""
    async with postgres_pool(own.postgres) as pool, redis_client(own.redis) as redis:
        cache = ListCache(redis, prefix=own.cache_prefix, ttl_seconds=60)
        item = await service.create_item(pool=pool, cache=cache, campaign_id=1, name="before", description=None)
        flights: SingleFlight[bytes] = SingleFlight()
        loaded, release = asyncio.Event(), asyncio.Event()

        async def pause_between_read_and_store() -> None:
            loaded.set()
            await release.wait()

        reader = asyncio.create_task(
            service.list_items(
                pool=pool, cache=cache, limit=998, offset=1, after_load=pause_between_read_and_store, flights=flights
            )
        )
        await asyncio.wait_for(loaded.wait(), timeout=10)
        await service.update_item(
            pool=pool, cache=cache, item_id=item.id, campaign_id=1, name="after", description=None
        )
        body, hit = await service.list_items(pool=pool, cache=cache, limit=998, offset=1, flights=flights)
        assert not hit
        assert b'"after"' in body
        assert b'"before"' not in body
        release.set()
        stale_body, _ = await reader
        assert b'"before"' in stale_body, "the paused reader did load the old row (it overlapped the write)"
        body, hit = await service.list_items(pool=pool, cache=cache, limit=998, offset=1, flights=flights)
        assert hit
        assert b'"after"' in body


async def on_own_redis(
    namespace: Namespace, scratch_stack: Callable[..., ScratchStack], name: str
) -> tuple[ScratchStack, ItemsSettings]:
    """A Redis of the test's own (to restart or pause) and migrated items settings that use it."""
    scratch = scratch_stack(f"items-{name}", "redis")
    scratch.up()
    own = await namespace.settings(name)
    settings = items_settings(
        own.model_copy(update={"redis": scratch.settings.redis.model_copy(update={"key_prefix": own.redis.key_prefix})})
    )
    await migrate(settings)
    return scratch, settings


@pytest.mark.slow
async def test_a_page_stored_across_a_redis_restart_never_becomes_current(
    namespace: Namespace, scratch_stack: Callable[..., ScratchStack]
) -> None:
    """A reader loads, Redis restarts (the generation is lost), then it stores its old page: writes never revive it.

    Had the lost counter restarted from 0, as many writes as the reader's generation would bring it back to that
    number and the old page would be served as current; from a random epoch it never meets it.
    """
    scratch, settings = await on_own_redis(namespace, scratch_stack, "restart")
    async with postgres_pool(settings.postgres) as pool, redis_client(settings.redis) as redis:
        cache = ListCache(redis, prefix=settings.cache_prefix, ttl_seconds=60)
        item = await service.create_item(pool=pool, cache=cache, campaign_id=1, name="v0", description=None)
        for _ in range(3):  # the generation the reader will see is a few writes past the epoch
            await cache.invalidate()
        seen, _ = await cache.lookup(limit=50, offset=1)

        async def restart_redis_between_read_and_store() -> None:
            await asyncio.to_thread(scratch.down, "redis")
            await asyncio.to_thread(scratch.up, "redis")
            # Drop the pool's dead sockets, as the API's first failed call after a restart does, so the store lands.
            await redis.connection_pool.disconnect()

        stale, hit = await service.list_items(
            pool=pool,
            cache=cache,
            limit=50,
            offset=1,
            after_load=restart_redis_between_read_and_store,
        )
        assert not hit
        assert b'"v0"' in stale
        assert await redis.exists(cache.page_key(seen, 50, 1)), "the old page was stored under the old generation"
        for version in range(1, 6):  # past where a counter from 0 would meet the reader's generation
            name = f"v{version}"
            await service.update_item(
                pool=pool, cache=cache, item_id=item.id, campaign_id=1, name=name, description=None
            )
            generation, _ = await cache.lookup(limit=50, offset=1)
            assert generation != seen
            for _ in range(2):  # a miss that loads, then a hit: both the new name
                body, _hit = await service.list_items(pool=pool, cache=cache, limit=50, offset=1)
                assert f'"{name}"'.encode() in body, f"after write {version} the list shows {body[:200]!r}"


@pytest.mark.slow
async def test_a_redis_that_stops_answering_costs_a_list_the_cache_deadline_and_a_write_its_certainty(
    namespace: Namespace, scratch_stack: Callable[..., ScratchStack]
) -> None:
    """Redis paused (SIGSTOP: its socket stays open, nothing answers): past the client's socket timeout (the API's
    ``items.cache_timeout_seconds``) a list reads PostgreSQL, and a committed write answers outcome_unknown. Without
    the timeout both would wait for as long as Redis stays paused."""
    scratch, settings = await on_own_redis(namespace, scratch_stack, "hung")
    async with postgres_pool(settings.postgres) as pool, redis_client(settings.redis, socket_timeout=0.5) as redis:
        cache = ListCache(redis, prefix=settings.cache_prefix, ttl_seconds=60)
        item = await service.create_item(pool=pool, cache=cache, campaign_id=1, name="before", description=None)
        scratch.signal("redis", signal.SIGSTOP)
        try:
            body, hit = await asyncio.wait_for(service.list_items(pool=pool, cache=cache, limit=10, offset=1), 60)
            assert not hit
            assert b'"before"' in body
            with pytest.raises(OutcomeUnknownError):
                await asyncio.wait_for(
                    service.update_item(
                        pool=pool, cache=cache, item_id=item.id, campaign_id=1, name="after", description=None
                    ),
                    60,
                )
        finally:
            scratch.signal("redis", signal.SIGCONT)
        assert await pool.fetchval("SELECT name FROM items WHERE id = $1", item.id) == "after", "it was committed"
        body, _hit = await service.list_items(pool=pool, cache=cache, limit=10, offset=1)  # Redis answers again
        assert b'"after"' in body
        assert await redis.ping()
