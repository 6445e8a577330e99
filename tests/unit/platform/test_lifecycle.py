"""Lifecycle: a stop request lets work finish within the drain deadline, then cancels what is left."""

from __future__ import annotations

import asyncio

from orderly.platform.lifecycle import Shutdown, drain


async def test_work_that_finishes_within_the_deadline_completes() -> None:
    shutdown = Shutdown()
    finished = asyncio.Event()

    async def work() -> None:
        await shutdown.wait()
        await asyncio.sleep(0.01)  # in-flight work after the stop request
        finished.set()

    asyncio.get_running_loop().call_soon(shutdown.request, "test")
    await drain(work(), shutdown, deadline=5)
    assert finished.is_set()


async def test_work_past_the_deadline_is_cancelled() -> None:
    shutdown = Shutdown()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_soon(shutdown.request, "test")
    await drain(stuck(), shutdown, deadline=0.05)
    assert cancelled.is_set()


async def test_sleep_returns_early_on_a_stop_request() -> None:
    shutdown = Shutdown()
    asyncio.get_running_loop().call_later(0.01, shutdown.request, "test")
    assert await shutdown.sleep(30) is True
