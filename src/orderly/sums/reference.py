"""The seed's reference design, kept only as a benchmark baseline (``--mode reference``). Not exactly-once.

Redis check, then an "In Process" mark, an autocommitted upsert of the sum, a separate read of the total (possibly
already moved on: stale), then the total written over the mark. Its holes are the three the batched mode closes.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from orderly.sums.domain import RequestInProgressError, SumRequest, render_sum
from orderly.sums.repository import SumStore
from orderly.sums.service import Answer

IN_PROCESS = b"In Process"


class ReferenceSums:
    def __init__(self, *, store: SumStore, client: aioredis.Redis, prefix: str, ttl_s: int, mark_ttl_s: int) -> None:
        self._store = store
        self._redis = client
        self._prefix = prefix + "sums:ref:"
        self._ttl_s = ttl_s
        self._mark_ttl_s = mark_ttl_s

    async def submit(self, request: SumRequest) -> Answer:
        if request.key is None:
            if request.number is not None:
                await self._store.add_autocommit(request.number)
            return Answer(render_sum(await self._store.current_total()), replayed=False)
        name = self._prefix + request.key
        cached = await self._redis.get(name)
        if cached == IN_PROCESS:
            raise RequestInProgressError(retry_after_s=1)
        if cached is not None:
            return Answer(cached if isinstance(cached, bytes) else cached.encode(), replayed=True)
        if not await self._redis.set(name, IN_PROCESS, nx=True, ex=self._mark_ttl_s):
            raise RequestInProgressError(retry_after_s=1)
        await self._store.add_autocommit(request.amount)
        body = render_sum(await self._store.current_total())
        await self._redis.set(name, body, ex=self._ttl_s)
        return Answer(body, replayed=False)
