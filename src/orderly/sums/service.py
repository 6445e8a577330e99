"""Use cases of the sums service: the idempotent submit, the commit batcher and the purge job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from orderly.platform.metrics import BatchTimer
from orderly.sums.cache import CacheUnavailableError, IdempotencyCache
from orderly.sums.domain import (
    Applied,
    Conflict,
    InProgressMark,
    KeyReusedError,
    Outcome,
    OverloadedError,
    Replayed,
    RequestInProgressError,
    StorageUnavailableError,
    StoredResponse,
    SumRequest,
    decide_on_cached,
    decode_state,
    outcome_of_stored,
    plan_batch,
    render_sum,
)
from orderly.sums.repository import SumStore
from orderly.sums.settings import SumsOptions

log = logging.getLogger(__name__)
BATCHES = BatchTimer("sums-committer")


@dataclass(frozen=True)
class Answer:
    body: bytes
    replayed: bool


@dataclass
class _Pending:
    request: SumRequest
    future: asyncio.Future[Outcome]


class CommitBatcher:
    """Group commit: requests that arrive while a transaction runs share the next one.

    Each transaction locks the hot row, looks up the batch's keys, inserts the new ones with their responses, adds the
    batch's amount and commits; every caller gets its own post-update sum (prefix sums in arrival order). The fresh
    responses go to Redis after the commit. A failed transaction fails each of its callers with a 503 error.
    """

    def __init__(
        self,
        *,
        store: SumStore,
        cache: IdempotencyCache,
        options: SumsOptions,
        on_committed: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._options = options
        self._on_committed = on_committed
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=options.queue_max)
        self._workers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> CommitBatcher:
        self._workers = [
            asyncio.create_task(self._run(), name=f"sums-batcher-{i}") for i in range(self._options.concurrent_batches)
        ]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(StorageUnavailableError("the service is shutting down"))

    async def submit(self, request: SumRequest) -> Outcome:
        """Queue the request for the next transaction and await its outcome; OverloadedError when the queue is full."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(request, future))
        except asyncio.QueueFull:
            waiting = self._queue.maxsize
            raise OverloadedError(f"{waiting} requests already wait for a commit; retry shortly") from None
        return await future

    async def _next_batch(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        limit = self._options.batch_max
        if self._options.batch_linger_ms and self._queue.qsize() < limit - 1:
            await asyncio.sleep(self._options.batch_linger_ms / 1000)
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                outcomes = await self._commit([p.request for p in batch])
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(StorageUnavailableError("the service is shutting down"))
                raise
            except Exception as error:
                failure = error if isinstance(error, StorageUnavailableError) else StorageUnavailableError(repr(error))
                if not isinstance(error, StorageUnavailableError):
                    log.exception("batch failed", extra={"size": len(batch)})
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(failure)
                continue
            for pending, outcome in zip(batch, outcomes, strict=True):
                if not pending.future.done():
                    pending.future.set_result(outcome)

    async def _commit(self, requests: list[SumRequest]) -> tuple[Outcome, ...]:
        with BATCHES.batch(len(requests)):
            async with self._store.transaction() as tx:
                total = await tx.lock_total()
                stored = await tx.stored_keys(r.key for r in requests if r.key is not None)
                plan = plan_batch(total, requests, stored)
                await tx.insert_keys(plan.new_keys, ttl_s=self._options.key_ttl_s)
                await tx.add(plan.delta)
        if self._on_committed is not None:
            self._on_committed(tuple(key for key, _ in plan.new_keys))
        with contextlib.suppress(CacheUnavailableError):
            await self._cache.store(
                [(key, response.encode()) for key, response in plan.new_keys], ttl_ms=self._options.key_ttl_s * 1000
            )
        return plan.outcomes


class SumsService:
    """The idempotent sum: Redis answers repeats fast, MySQL guarantees each key is applied at most once."""

    def __init__(self, *, store: SumStore, cache: IdempotencyCache, batcher: CommitBatcher, options: SumsOptions):
        self._store = store
        self._cache = cache
        self._batcher = batcher
        self._options = options
        self._instance = secrets.token_hex(4)

    async def submit(self, request: SumRequest) -> Answer:
        if request.number is None and request.key is None:
            return Answer(render_sum(await self._store.current_total()), replayed=False)
        if request.key is None:
            return self._answer(await self._batcher.submit(request), request)
        return await self._submit_keyed(request, request.key)

    async def _submit_keyed(self, request: SumRequest, key: str) -> Answer:
        mark = InProgressMark(owner=f"{self._instance}:{secrets.token_hex(6)}", fingerprint=request.fingerprint)
        marked = False
        try:
            existing = await self._cache.claim(key, mark.encode(), ttl_ms=self._options.in_progress_ttl_ms)
        except CacheUnavailableError:
            existing = None  # MySQL alone decides; a concurrent repeat waits on the hot row and then replays
        else:
            marked = existing is None
            state = decode_state(existing.raw) if existing is not None else None
            if existing is not None and state is not None:
                try:
                    replay = decide_on_cached(state, fingerprint=request.fingerprint, pttl_ms=existing.pttl_ms)
                except RequestInProgressError as busy:
                    # A mark outlives its request when the process died after the commit or Redis failed after it:
                    # if MySQL already holds the key, the mark is stale and the stored answer is final.
                    return await self._answer_stale_mark(request, key, busy)
                return Answer(replay.body, replayed=True)
        try:
            outcome = await self._batcher.submit(request)
        except BaseException:
            if marked:
                await self._release(key, mark)
            raise
        if isinstance(outcome, Replayed):
            with contextlib.suppress(CacheUnavailableError):
                response = StoredResponse(fingerprint=request.fingerprint, body=outcome.body)
                await self._cache.store([(key, response.encode())], ttl_ms=self._options.key_ttl_s * 1000)
        elif isinstance(outcome, Conflict) and marked:
            await self._release(key, mark)
        return self._answer(outcome, request)

    async def _answer_stale_mark(self, request: SumRequest, key: str, busy: RequestInProgressError) -> Answer:
        try:
            stored = await self._store.find_key(key)
        except StorageUnavailableError:
            stored = None
        if stored is None:
            raise busy  # the first request is really still running
        outcome = outcome_of_stored(stored, fingerprint=request.fingerprint)
        if isinstance(outcome, Replayed):
            with contextlib.suppress(CacheUnavailableError):
                await self._cache.store([(key, stored.encode())], ttl_ms=self._options.key_ttl_s * 1000)
        return self._answer(outcome, request)

    async def _release(self, key: str, mark: InProgressMark) -> None:
        with contextlib.suppress(CacheUnavailableError):
            await self._cache.release(key, mark.encode())

    @staticmethod
    def _answer(outcome: Outcome, request: SumRequest) -> Answer:
        if isinstance(outcome, Applied):
            return Answer(outcome.body, replayed=False)
        if isinstance(outcome, Replayed):
            return Answer(outcome.body, replayed=True)
        raise KeyReusedError(f"idempotency key {request.key!r} was used with a different request")


async def purge_expired_keys(*, store: SumStore, batch: int, max_batches: int = 100) -> int:
    """Delete expired key rows in bounded batches until none are left (or ``max_batches`` ran); returns the count."""
    total = 0
    for _ in range(max_batches):
        deleted = await store.purge_expired(limit=batch)
        total += deleted
        if deleted < batch:
            break
    return total
