"""The MySQL and Redis adapters against the real servers, driven in-process."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from orderly.platform.pools import mysql_pool, redis_client
from orderly.platform.settings import InfraSettings
from orderly.sums.cache import CacheUnavailableError, Existing, IdempotencyCache
from orderly.sums.cli import migrate_database
from orderly.sums.domain import StorageUnavailableError, SumRequest
from orderly.sums.repository import SESSION_INIT, SumStore
from orderly.sums.service import CommitBatcher, SumsService, purge_expired_keys
from orderly.sums.settings import SumsOptions
from tests.plumbing import Namespace, free_port


@pytest.fixture(scope="module")
async def fresh(namespace: Namespace) -> InfraSettings:
    settings = await namespace.settings("sums-store")
    await migrate_database(settings.mysql)
    return settings


@asynccontextmanager
async def running(
    settings: InfraSettings, options: SumsOptions
) -> AsyncIterator[tuple[SumsService, SumStore, IdempotencyCache]]:
    async with (
        mysql_pool(settings.mysql, init_command=SESSION_INIT) as pool,
        redis_client(settings.redis, socket_timeout=0.5, socket_connect_timeout=0.5) as client,
    ):
        store = SumStore(pool)
        cache = IdempotencyCache(client, prefix=settings.redis.key_prefix, skip_after_failure_s=1)
        async with CommitBatcher(store=store, cache=cache, options=options) as batcher:
            yield SumsService(store=store, cache=cache, batcher=batcher, options=options), store, cache


async def test_migrations_are_idempotent(fresh: InfraSettings) -> None:
    assert await migrate_database(fresh.mysql) == []


async def test_two_batchers_on_one_database_give_every_caller_a_distinct_exact_sum(fresh: InfraSettings) -> None:
    """Redis is unreachable here, so every repeat reaches MySQL: duplicates inside and across batches."""
    options = SumsOptions(concurrent_batches=2)
    no_redis = fresh.model_copy(update={"redis": fresh.redis.model_copy(update={"port": free_port()})})
    async with running(no_redis, options) as (one, store, _), running(no_redis, options) as (two, _, _):
        before = await store.current_total()
        run = secrets.token_hex(4)
        answers = await asyncio.gather(
            *((one if i % 2 else two).submit(SumRequest(i % 150 + 1, f"b-{run}-{i % 150}")) for i in range(300))
        )
        after = await store.current_total()
    applied = sorted(int(a.body[7:-1]) for a in answers if not a.replayed)
    assert len(applied) == len(set(applied))
    assert after == max(applied)
    assert after - before == sum(range(1, 151))
    assert sum(a.replayed for a in answers) == 150


async def test_purge_deletes_only_expired_keys_in_bounded_batches(fresh: InfraSettings) -> None:
    async with mysql_pool(fresh.mysql) as pool:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("DELETE FROM idempotency_keys")
            for i in range(7):
                await cur.execute(
                    "INSERT INTO idempotency_keys VALUES (%s, %s, '{}', UTC_TIMESTAMP(6), "
                    "UTC_TIMESTAMP(6) + INTERVAL %s SECOND)",
                    (f"p{i}".encode(), "f" * 64, -60 if i < 5 else 3600),
                )
            await conn.commit()
        store = SumStore(pool)
        assert await store.purge_expired(limit=2) == 2
        assert await purge_expired_keys(store=store, batch=2) == 3
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT ikey FROM idempotency_keys ORDER BY ikey")
            left = [bytes(r[0]).decode() for r in await cur.fetchall()]
            await conn.rollback()
    assert left == ["p5", "p6"]


async def test_mysql_down_is_503_with_nothing_applied_and_the_mark_released(fresh: InfraSettings) -> None:
    dead = fresh.model_copy(update={"mysql": fresh.mysql.model_copy(update={"port": free_port(), "pool_min": 0})})
    key = "down-" + secrets.token_hex(6)
    async with running(dead, SumsOptions()) as (sums, _, cache):
        with pytest.raises(StorageUnavailableError):
            await sums.submit(SumRequest(3, key))
        async with redis_client(fresh.redis) as direct:
            assert await direct.exists(cache.name(key)) == 0


async def test_claims_sent_together_each_get_their_own_answer(fresh: InfraSettings) -> None:
    """Claims of one event-loop turn share a pipeline; each still sees exactly what it would alone."""
    run = secrets.token_hex(4)
    async with redis_client(fresh.redis) as client:
        cache = IdempotencyCache(client, prefix=fresh.redis.key_prefix, skip_after_failure_s=1)
        await client.hset(cache.name(f"hash-{run}"), "f", "v")  # a value no claim can read: a server-side error
        distinct = [cache.claim(f"d-{run}-{i}", f"P|d{i}|fp", ttl_ms=60_000) for i in range(40)]
        same = [cache.claim(f"s-{run}", f"P|s{i}|fp", ttl_ms=60_000) for i in range(10)]
        broken = cache.claim(f"hash-{run}", "P|h|fp", ttl_ms=60_000)
        results = await asyncio.gather(*distinct, *same, broken, return_exceptions=True)
        assert results[:40] == [None] * 40
        assert results[40] is None  # the first claim of the key wins, in call order
        assert all(
            isinstance(r, Existing) and r.raw == b"P|s0|fp" and 0 < r.pttl_ms <= 60_000 for r in results[41:50]
        ), results[41:50]
        assert isinstance(results[50], CacheUnavailableError)  # only the broken key's caller fails
        assert await client.get(cache.name(f"d-{run}-7")) == b"P|d7|fp"
        assert 0 < await client.pttl(cache.name(f"d-{run}-7")) <= 60_000


async def test_claims_sent_together_all_fail_as_unavailable_when_redis_is_unreachable(fresh: InfraSettings) -> None:
    unreachable = fresh.redis.model_copy(update={"port": free_port()})
    async with redis_client(unreachable, socket_connect_timeout=0.5, retry=None) as client:
        cache = IdempotencyCache(client, prefix=fresh.redis.key_prefix, skip_after_failure_s=1)
        results = await asyncio.gather(
            *(cache.claim(f"u-{i}", "P|u|fp", ttl_ms=1_000) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, CacheUnavailableError) for r in results), results
        with pytest.raises(CacheUnavailableError):  # and Redis is skipped for a while, as after any failure
            await cache.claim("u-after", "P|u|fp", ttl_ms=1_000)
