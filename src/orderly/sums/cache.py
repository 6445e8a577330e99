"""Redis adapter: the in-progress mark and the cached response of each idempotency key, from plain commands + Lua.

Redis is an accelerator, never the authority: MySQL decides whether a key was applied. Any Redis failure is reported
as ``CacheUnavailableError`` and the caller carries on through MySQL alone; after a failure Redis is skipped for a short
while so an outage does not add a timeout to every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from orderly.platform.redis_script import LuaScript

log = logging.getLogger(__name__)

# Return the current value and its remaining TTL, or set our mark (only if absent) and return nil. One round trip,
# atomic, so two requests can never both see "absent".
CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  return {current, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# Delete the key only while it still holds the caller's own mark (compare-and-delete).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


class CacheUnavailableError(Exception):
    """Redis did not answer; the caller proceeds through MySQL alone."""


@dataclass(frozen=True)
class Existing:
    raw: bytes
    pttl_ms: int


@dataclass(frozen=True)
class _Claim:
    name: str
    mark: str
    ttl_ms: int
    answer: asyncio.Future[Any]


class IdempotencyCache:
    def __init__(self, client: aioredis.Redis, *, prefix: str, skip_after_failure_s: float) -> None:
        self._redis = client
        self._prefix = prefix + "sums:ikey:"
        self._skip_s = skip_after_failure_s
        self._down_until = 0.0
        self._release = LuaScript(client, RELEASE)
        self._claims: list[_Claim] = []  # queued in this event-loop turn, sent together by one flush task
        self._flushes: set[asyncio.Task[None]] = set()

    def name(self, key: str) -> str:
        return self._prefix + key

    def _check(self) -> None:
        if time.monotonic() < self._down_until:
            raise CacheUnavailableError("redis skipped after a recent failure")

    def _failed(self, error: BaseException) -> CacheUnavailableError:
        if time.monotonic() >= self._down_until:
            log.warning("redis unavailable, using mysql alone", extra={"error": repr(error)})
        self._down_until = time.monotonic() + self._skip_s
        return CacheUnavailableError(repr(error))

    async def claim(self, key: str, mark: str, *, ttl_ms: int) -> Existing | None:
        """Set our in-progress mark if the key is absent (None), else return what is there.

        Claims made in the same event-loop turn share one pipeline (one socket write, one connection checkout):
        py-spy showed each claim's own round trip through redis-py among the API's biggest costs. Each claim is
        still its own atomic script call and each caller gets its own answer or error, exactly as alone.
        """
        self._check()
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._claims.append(_Claim(self.name(key), mark, ttl_ms, answer))
        if len(self._claims) == 1:  # the first claim of this turn schedules the flush; it runs after the turn
            flush = asyncio.create_task(self._send_claims(), name="sums-claims")
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        try:
            found = await answer
        except _REDIS_ERRORS as error:
            raise self._failed(error) from error
        if not found:
            return None
        raw, pttl = found
        return Existing(raw=bytes(raw), pttl_ms=int(pttl))

    async def _send_claims(self) -> None:
        claims, self._claims = self._claims, []
        claims = [c for c in claims if not c.answer.done()]  # a caller cancelled before the send sets no mark
        if not claims:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for c in claims:
                    # EVAL, not EVALSHA: Redis caches the script by its hash either way, and a Redis that restarted
                    # (empty script cache) needs no NOSCRIPT retry inside a pipeline.
                    pipe.eval(CLAIM, 1, c.name, c.mark, c.ttl_ms)
                results = await pipe.execute(raise_on_error=False)
        except Exception as error:  # the whole pipeline failed (connection, timeout): every caller sees it
            for c in claims:
                if not c.answer.done():
                    c.answer.set_exception(error)
            return
        except BaseException:
            for c in claims:
                c.answer.cancel()
            raise
        for c, result in zip(claims, results, strict=True):
            if c.answer.done():
                continue
            if isinstance(result, Exception):  # this one command failed (e.g. a server error): only its caller
                c.answer.set_exception(result)
            else:
                c.answer.set_result(result)

    async def release(self, key: str, mark: str) -> None:
        self._check()
        try:
            await self._release(self.name(key), mark)
        except _REDIS_ERRORS as error:
            raise self._failed(error) from error

    async def store(self, items: Sequence[tuple[str, bytes]], *, ttl_ms: int) -> None:
        """Cache final responses (overwriting any mark): one pipeline, every key with a TTL."""
        if not items:
            return
        self._check()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(self.name(key), value, px=ttl_ms)
                await pipe.execute()
        except _REDIS_ERRORS as error:
            raise self._failed(error) from error

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except _REDIS_ERRORS:
            return False
