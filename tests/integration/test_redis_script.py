"""A Lua script called by its SHA1 runs on a server that never saw it, and again after the server lost its scripts."""

from __future__ import annotations

from collections.abc import Callable

from orderly.platform.pools import redis_client
from orderly.platform.redis_script import LuaScript
from tests.plumbing import ScratchStack

ADD = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_a_lua_script_runs_on_a_fresh_server_and_after_its_script_cache_is_flushed(
    scratch_stack: Callable[..., ScratchStack],
) -> None:
    scratch = scratch_stack("lua", "redis")  # its own Redis: flushing the shared one's scripts would touch every test
    scratch.up()
    async with redis_client(scratch.settings.redis) as redis:
        add = LuaScript(redis, ADD)
        sha = redis.register_script(ADD).sha
        assert await redis.script_exists(sha) == [False]
        assert await add(b"counter", b"2") == 2  # NOSCRIPT, loaded, run once
        assert await redis.script_exists(sha) == [True]
        await redis.script_flush()  # what a restart does to the script cache
        assert await add("counter", 3) == 5
        assert await add(b"counter", b"1") == 6
