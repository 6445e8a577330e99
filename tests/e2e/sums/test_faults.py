"""Fault injection: a crash between the MySQL commit and the Redis write, Redis flushed, restarted or absent."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import defaultdict
from collections.abc import Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from orderly.platform.settings import InfraSettings
from orderly.sums.cli import migrate_database
from tests.e2e.sums.conftest import Cluster, Http, Reply, start_cluster
from tests.plumbing import Processes, ScratchStack, free_port, wait_until

pytestmark = pytest.mark.slow


async def test_a_crash_between_commit_and_redis_write_is_replayed_on_retry_and_applied_once(
    processes: Processes, sums_infra: InfraSettings, client: Http
) -> None:
    key = "crash-" + secrets.token_hex(6)
    doomed = start_cluster(processes, sums_infra, count=1, crash_after_commit_key=key)
    survivor = start_cluster(processes, sums_infra, count=1)
    before = await survivor.total(client)

    with pytest.raises(aiohttp.ClientError):
        await client.get(f"{doomed.url(0)}/sum", params={"number": 11, "ikey": key})
    # The instance died (os._exit(137)); a process manager would restart it. The survivor serves the retry.
    crashed = doomed.spawned[0]
    await wait_until(
        lambda: any("test hook: crashing after the mysql commit" in line for line in crashed.errors),
        within=10,
        what="the crash hook's log line",
    )
    assert await survivor.total(client) == before + 11, "the commit happened before the crash"

    # The crashed request's in-progress mark is still in Redis (10 s TTL), but MySQL holds the key: replay at once.
    retry = await client.get(f"{survivor.url(0)}/sum", params={"number": 11, "ikey": key})
    assert retry.status_code == 200
    assert retry.content == b'{"sum":%d}' % (before + 11)
    assert retry.headers["Idempotent-Replayed"] == "true"
    again = await client.get(f"{survivor.url(0)}/sum", params={"number": 11, "ikey": key})
    assert again.content == retry.content
    assert await survivor.total(client) == before + 11


async def run_keyed_load(
    cluster: Cluster, client: Http, numbers: dict[str, int], copies: int, on_progress: Callable[[int], None]
) -> dict[str, set[bytes]]:
    """Send every key ``copies`` times in random order over all instances; collect each key's 200 bodies."""
    sends = [k for k in numbers for _ in range(copies)]
    random.Random(7).shuffle(sends)
    bodies: dict[str, set[bytes]] = defaultdict(set)
    limit = asyncio.Semaphore(32)
    done = 0

    async def send(i: int, key: str) -> None:
        nonlocal done
        async with limit:
            reply = await client.get(f"{cluster.url(i)}/sum", params={"number": numbers[key], "ikey": key})
        assert reply.status_code in (200, 409), reply.text
        if reply.status_code == 200:
            bodies[key].add(reply.content)
        done += 1
        on_progress(done)

    await asyncio.gather(*(send(i, k) for i, k in enumerate(sends)))
    return bodies


async def test_redis_flushed_and_restarted_mid_run_never_applies_a_key_twice(
    processes: Processes, sums_infra: InfraSettings, client: Http, scratch_stack: Callable[..., ScratchStack]
) -> None:
    scratch = scratch_stack("sums-redis", "redis")
    scratch.up()
    redis_settings = scratch.settings.redis.model_copy(update={"key_prefix": sums_infra.redis.key_prefix + "flaky:"})
    settings = sums_infra.model_copy(update={"redis": redis_settings})
    cluster = start_cluster(processes, settings, redis_timeout_ms=200, redis_retry_after_s=0.2)
    run = secrets.token_hex(4)
    rng = random.Random(3)
    numbers = {f"flaky-{run}-{i}": rng.randint(1, 10**12) for i in range(1_200)}
    before = await cluster.total(client)

    flush_at, kill_at = asyncio.Event(), asyncio.Event()

    def progress(done: int) -> None:
        if done >= 1_000:
            flush_at.set()
        if done >= 1_800:
            kill_at.set()

    async def break_redis() -> None:
        await flush_at.wait()
        direct = aioredis.Redis.from_url(redis_settings.url())
        try:
            await direct.flushall()
        finally:
            await direct.aclose()
        await kill_at.wait()
        await asyncio.to_thread(scratch.kill, "redis")
        await asyncio.to_thread(scratch.up, "redis")

    breaker = asyncio.create_task(break_redis())
    bodies = await run_keyed_load(cluster, client, numbers, 3, progress)
    await breaker

    assert set(bodies) == set(numbers)
    assert all(len(b) == 1 for b in bodies.values()), "every key answered one body"
    for i, (key, number) in enumerate(list(numbers.items())[:200]):
        again = await client.get(f"{cluster.url(i)}/sum", params={"number": number, "ikey": key})
        assert again.status_code == 200
        assert bodies[key] == {again.content}
    assert await cluster.total(client) == before + sum(numbers.values())


async def test_with_redis_unreachable_concurrent_repeats_are_applied_once_through_mysql(
    processes: Processes, sums_infra: InfraSettings, client: Http
) -> None:
    dead = sums_infra.redis.model_copy(update={"port": free_port()})
    cluster = start_cluster(processes, sums_infra.model_copy(update={"redis": dead}), redis_timeout_ms=200)
    key = "noredis-" + secrets.token_hex(6)
    before = await cluster.total(client)

    replies = await asyncio.gather(
        *(
            client.post(f"{cluster.url(i)}/sum", params={"number": 9}, headers={"Idempotency-Key": key})
            for i in range(60)
        )
    )
    assert {r.status_code for r in replies} == {200}
    assert {r.content for r in replies} == {b'{"sum":%d}' % (before + 9)}
    assert sum("Idempotent-Replayed" not in r.headers for r in replies) == 1
    reused = await client.get(f"{cluster.url(0)}/sum", params={"number": 8, "ikey": key})
    assert reused.status_code == 422
    assert await cluster.total(client) == before + 9


async def test_mysql_killed_answers_503_with_nothing_applied_and_the_retry_applies_once(
    processes: Processes, sums_infra: InfraSettings, client: Http, scratch_stack: Callable[..., ScratchStack]
) -> None:
    scratch = scratch_stack("sums-mysql", "mariadb")
    scratch.up()
    settings = sums_infra.model_copy(update={"mysql": scratch.settings.mysql})
    await migrate_database(settings.mysql)
    cluster = start_cluster(processes, settings)
    key = "outage-" + secrets.token_hex(6)
    first = await client.get(f"{cluster.url(0)}/sum", params={"number": 5})
    assert first.content == b'{"sum":5}'

    await asyncio.to_thread(scratch.kill, "mariadb")
    refused = await client.get(f"{cluster.url(1)}/sum", params={"number": 7, "ikey": key})
    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert refused.json()["dependency"] == "mysql"
    assert refused.json()["error"] == "storage_unavailable"
    not_ready = await client.get(f"{cluster.url(1)}/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["mysql"] is False
    direct = aioredis.Redis.from_url(settings.redis.url())
    try:
        assert await direct.exists(f"{settings.redis.key_prefix}sums:ikey:{key}") == 0, "the mark was released"
    finally:
        await direct.aclose()

    await asyncio.to_thread(scratch.up, "mariadb")
    retry = await retry_while_unavailable(client, f"{cluster.url(2)}/sum", {"number": 7, "ikey": key})
    assert retry.status_code == 200
    assert retry.content == b'{"sum":12}'
    again = await client.get(f"{cluster.url(0)}/sum", params={"number": 7, "ikey": key})
    assert again.content == retry.content
    assert await cluster.total(client) == 12


async def retry_while_unavailable(client: Http, url: str, params: dict[str, str | int]) -> Reply:
    """Repeat a request while the service answers 503 (MySQL coming back), up to a deadline."""
    async with asyncio.timeout(30):
        while True:
            reply = await client.get(url, params=params)
            if reply.status_code != 503:
                return reply
            await asyncio.sleep(0.2)
