"""Redis adapter: cache-aside pages of /items/list under a generation counter.

A page is stored under a key that contains the generation the reader saw *before* it queried PostgreSQL; every write
increments the generation after its commit. A reader that loaded old rows therefore writes them under a generation
nobody asks for any more, so a stale page can never become visible after the write's response.

A generation that is missing (Redis restarted or was flushed) starts again from a random 62-bit epoch, never from 0:
a reader still in flight across the restart stores its old page under the generation it saw before, and a counter
restarting from 0 would count back up to that number after a few writes and serve the old page as current. From a
random start the counter reaches an old generation with odds of about one in 2**62.

A Redis that stops answering (paused, partitioned) is bounded by the client's ``socket_timeout`` (the API sets it to
``items.cache_timeout_seconds``): past it a call raises redis-py's ``TimeoutError``, a list reads PostgreSQL and a
write answers ``outcome_unknown``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import redis.asyncio as aioredis

from orderly.platform.redis_script import LuaScript

V = TypeVar("V")

# One round trip for a hit: read the generation (starting it at the random epoch ARGV[3] when missing) and the page.
_READ = """
local gen = redis.call('GET', KEYS[1])
if not gen then
    redis.call('SET', KEYS[1], ARGV[3])
    gen = ARGV[3]
end
return {gen, redis.call('GET', ARGV[1] .. gen .. ARGV[2])}
"""
# A write's invalidation: the next generation, counting from the random epoch ARGV[1] when the counter is missing.
_BUMP = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('INCR', KEYS[1])
"""
EPOCH_BITS = 62  # room to count up by one per write for ages before INCR's 2**63 - 1 limit


def random_epoch() -> int:
    """Where a missing generation counter starts: random, so it never meets a generation used before it was lost.

    Every cache read passes one (a hit must stay one round trip), so it comes from the ``random`` module's generator,
    seeded from the OS and reseeded in each forked worker, not from ``secrets`` (a system call per read: 0.77 µs
    against 0.06 µs here). Nothing about it is secret; it only has to be unlikely to meet an old generation.
    """
    return random.getrandbits(EPOCH_BITS)


class ListCache:
    """Pages of the item list, keyed by (generation, limit, offset), each living ``ttl_seconds``."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._page_prefix = f"{prefix}list:page:"
        # The scripts' keys and arguments go as bytes: redis-py passes bytes through, while each str or int costs it
        # a chain of type checks and an encode (a tenth of the Python calls of a write's invalidation).
        self._gen_key, self._page_prefix_bytes = f"{prefix}list:gen".encode(), self._page_prefix.encode()
        self._ttl = ttl_seconds
        self._read = LuaScript(redis, _READ)
        self._bump = LuaScript(redis, _BUMP)

    def page_key(self, generation: int, limit: int, offset: int) -> str:
        return f"{self._page_prefix}{generation}:{limit}:{offset}"

    async def lookup(self, *, limit: int, offset: int) -> tuple[int, bytes | None]:
        """The current generation and the page cached for it, if any."""
        gen, body = await self._read(
            self._gen_key, self._page_prefix_bytes, b":%d:%d" % (limit, offset), b"%d" % random_epoch()
        )
        return int(gen), body

    async def store(self, *, generation: int, limit: int, offset: int, body: bytes) -> None:
        await self._redis.set(self.page_key(generation, limit, offset), body, ex=self._ttl)

    async def invalidate(self) -> int:
        """Make every cached page unreachable; called after a write's commit. Returns the new generation."""
        return int(await self._bump(self._gen_key, b"%d" % random_epoch()))


class SingleFlight(Generic[V]):
    """Concurrent loads of one key share a single run: the first caller starts it, later callers await the same.

    The load runs in a task of its own, so a caller that goes away (client disconnect) neither cancels it for the
    others nor leaves the page unstored; a failure reaches every caller still waiting.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[V]] = {}
        self._callers: dict[Hashable, int] = {}

    def callers(self, key: Hashable) -> int:
        """How many callers share the load of ``key`` under way (0: none is)."""
        return self._callers.get(key, 0)

    async def run(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._running[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        self._callers[key] = self._callers.get(key, 0) + 1
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, done: asyncio.Task[V]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
            self._callers.pop(key, None)
        if not done.cancelled():
            done.exception()  # marks a failure as seen: the callers that still wait get it raised
