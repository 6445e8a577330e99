"""The decision logic of the use case with in-memory fakes of the two adapters (no servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import pytest

from orderly.sums.cache import CacheUnavailableError, Existing, IdempotencyCache
from orderly.sums.domain import (
    InProgressMark,
    KeyReusedError,
    OverloadedError,
    RequestInProgressError,
    StorageUnavailableError,
    StoredResponse,
    SumRequest,
)
from orderly.sums.repository import SumStore, SumTransaction
from orderly.sums.service import CommitBatcher, SumsService
from orderly.sums.settings import SumsOptions


class MemoryTransaction(SumTransaction):
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.total = store.total
        self.keys = dict(store.keys)

    async def lock_total(self) -> int:
        return self.total

    async def stored_keys(self, keys: Iterable[str]) -> dict[str, StoredResponse]:
        return {k: self.keys[k] for k in keys if k in self.keys}

    async def insert_keys(self, rows: Iterable[tuple[str, StoredResponse]], *, ttl_s: int) -> None:  # noqa: ARG002
        for key, response in rows:
            assert key not in self.keys, "duplicate primary key"
            self.keys[key] = response

    async def add(self, amount: int) -> None:
        self.total += amount


class MemoryStore(SumStore):
    """The MySQL side in memory: a transaction's writes become visible only on a clean exit (commit)."""

    def __init__(self) -> None:
        self.total = 0
        self.keys: dict[str, StoredResponse] = {}
        self.down = False
        self.transactions = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SumTransaction]:
        if self.down:
            raise StorageUnavailableError("down")
        tx = MemoryTransaction(self)
        yield tx
        self.total, self.keys = tx.total, tx.keys
        self.transactions += 1

    async def current_total(self) -> int:
        if self.down:
            raise StorageUnavailableError("down")
        return self.total

    async def find_key(self, key: str) -> StoredResponse | None:
        if self.down:
            raise StorageUnavailableError("down")
        return self.keys.get(key)


class MemoryCache(IdempotencyCache):
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.down = False
        self.fail_store = False

    def _up(self) -> None:
        if self.down:
            raise CacheUnavailableError("down")

    async def claim(self, key: str, mark: str, *, ttl_ms: int) -> Existing | None:
        self._up()
        if key in self.values:
            return Existing(raw=self.values[key], pttl_ms=ttl_ms)
        self.values[key] = mark.encode()
        return None

    async def release(self, key: str, mark: str) -> None:
        self._up()
        if self.values.get(key) == mark.encode():
            del self.values[key]

    async def store(self, items: Sequence[tuple[str, bytes]], *, ttl_ms: int) -> None:  # noqa: ARG002
        self._up()
        if self.fail_store:
            raise CacheUnavailableError("lost between commit and cache write")
        self.values.update(items)


@asynccontextmanager
async def service(store: MemoryStore, cache: MemoryCache) -> AsyncIterator[SumsService]:
    options = SumsOptions()
    async with CommitBatcher(store=store, cache=cache, options=options) as batcher:
        yield SumsService(store=store, cache=cache, batcher=batcher, options=options)


async def test_a_repeat_is_replayed_from_redis_with_the_first_body() -> None:
    store, cache = MemoryStore(), MemoryCache()
    async with service(store, cache) as sums:
        first = await sums.submit(SumRequest(5, "k"))
        again = await sums.submit(SumRequest(5, "k"))
    assert (first.body, first.replayed) == (b'{"sum":5}', False)
    assert (again.body, again.replayed) == (b'{"sum":5}', True)
    assert store.total == 5
    assert store.transactions == 1


async def test_a_repeat_while_the_first_is_in_progress_gets_409_and_nothing_is_applied() -> None:
    store, cache = MemoryStore(), MemoryCache()
    request = SumRequest(5, "k")
    cache.values["k"] = InProgressMark(owner="other", fingerprint=request.fingerprint).encode().encode()
    async with service(store, cache) as sums:
        with pytest.raises(RequestInProgressError):
            await sums.submit(request)
    assert store.total == 0


async def test_a_stale_mark_of_a_committed_key_is_answered_from_mysql_not_409() -> None:
    store, cache = MemoryStore(), MemoryCache()
    request = SumRequest(4, "k")
    async with service(store, cache) as sums:
        cache.fail_store = True  # the process "died" after the commit: the mark stays, no response in Redis
        first = await sums.submit(request)
        cache.fail_store = False
        cache.values["k"] = InProgressMark(owner="dead", fingerprint=request.fingerprint).encode().encode()
        retry = await sums.submit(request)
        with pytest.raises(KeyReusedError):
            await sums.submit(SumRequest(5, "k"))
    assert (retry.body, retry.replayed) == (first.body, True)
    assert store.total == 4


async def test_when_the_redis_write_is_lost_after_commit_mysql_replays_the_retry() -> None:
    store, cache = MemoryStore(), MemoryCache()
    async with service(store, cache) as sums:
        cache.fail_store = True
        first = await sums.submit(SumRequest(7, "k"))
        cache.values.clear()  # the mark expired or Redis was flushed
        cache.fail_store = False
        retry = await sums.submit(SumRequest(7, "k"))
    assert retry.body == first.body == b'{"sum":7}'
    assert retry.replayed
    assert store.total == 7
    assert cache.values["k"] == StoredResponse(SumRequest(7, "k").fingerprint, first.body).encode()


async def test_key_reuse_with_another_number_is_422_from_mysql_and_the_mark_is_released() -> None:
    store, cache = MemoryStore(), MemoryCache()
    async with service(store, cache) as sums:
        await sums.submit(SumRequest(7, "k"))
        cache.values.clear()
        with pytest.raises(KeyReusedError):
            await sums.submit(SumRequest(8, "k"))
    assert store.total == 7
    assert "k" not in cache.values


async def test_with_redis_down_concurrent_repeats_are_applied_once_through_mysql() -> None:
    store, cache = MemoryStore(), MemoryCache()
    cache.down = True
    async with service(store, cache) as sums:
        answers = await asyncio.gather(*(sums.submit(SumRequest(3, "k")) for _ in range(20)))
    assert {a.body for a in answers} == {b'{"sum":3}'}
    assert sum(not a.replayed for a in answers) == 1
    assert store.total == 3


async def test_mysql_down_fails_with_503_and_releases_the_mark() -> None:
    store, cache = MemoryStore(), MemoryCache()
    store.down = True
    async with service(store, cache) as sums:
        with pytest.raises(StorageUnavailableError):
            await sums.submit(SumRequest(3, "k"))
    assert cache.values == {}
    assert store.total == 0


async def test_concurrent_new_requests_each_get_a_distinct_exact_sum() -> None:
    store, cache = MemoryStore(), MemoryCache()
    async with service(store, cache) as sums:
        answers = await asyncio.gather(*(sums.submit(SumRequest(1, f"k{i}")) for i in range(100)))
    assert sorted(a.body for a in answers) == sorted(b'{"sum":%d}' % i for i in range(1, 101))
    assert store.transactions < 100  # requests shared transactions


async def test_without_a_number_or_key_the_current_sum_is_read_and_nothing_changes() -> None:
    store, cache = MemoryStore(), MemoryCache()
    store.total = 41
    async with service(store, cache) as sums:
        answer = await sums.submit(SumRequest(None, None))
    assert answer.body == b'{"sum":41}'
    assert store.transactions == 0


class BlockedStore(MemoryStore):
    """A store whose transactions wait until ``release`` is set; ``entered`` is set when the first one starts."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SumTransaction]:
        self.entered.set()
        await self.release.wait()
        async with super().transaction() as tx:
            yield tx


async def test_a_full_commit_queue_refuses_at_once_with_overloaded_and_releases_the_mark() -> None:
    store, cache = BlockedStore(), MemoryCache()
    options = SumsOptions(queue_max=1)
    async with CommitBatcher(store=store, cache=cache, options=options) as batcher:
        sums = SumsService(store=store, cache=cache, batcher=batcher, options=options)
        committing = asyncio.ensure_future(sums.submit(SumRequest(1, "k-first")))
        await asyncio.wait_for(store.entered.wait(), timeout=5)  # the batcher holds it in a transaction
        queued = asyncio.ensure_future(sums.submit(SumRequest(1, "k-queued")))
        await asyncio.sleep(0)  # one turn: the fakes never wait, so the request runs up to its place in the queue
        assert "k-queued" in cache.values, "its in-progress mark is set just before it joins the queue"
        with pytest.raises(OverloadedError):
            await sums.submit(SumRequest(1, "k-over"))
        assert "k-over" not in cache.values, "a refused request leaves no in-progress mark behind"
        store.release.set()
        answers = await asyncio.gather(committing, queued)
    assert [a.body for a in answers] == [b'{"sum":1}', b'{"sum":2}']
    assert store.total == 2, "the refused request was not applied"
