"""Lifecycle: a stop request lets work finish within the drain deadline, then cancels what is left."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from orderly.platform.lifecycle import EXIT_DRAIN_CUT_SHORT, Shutdown, drain


async def test_work_that_finishes_within_the_deadline_completes() -> None:
    shutdown = Shutdown()
    finished = asyncio.Event()

    async def work() -> None:
        await shutdown.wait()
        await asyncio.sleep(0.01)  # in-flight work after the stop request
        finished.set()

    asyncio.get_running_loop().call_soon(shutdown.request, "test")
    assert await drain(work(), shutdown, deadline=5) is True
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
    assert await drain(stuck(), shutdown, deadline=0.05) is False, "a drain cut short says so"
    assert cancelled.is_set()


async def test_sleep_returns_early_on_a_stop_request() -> None:
    shutdown = Shutdown()
    asyncio.get_running_loop().call_later(0.01, shutdown.request, "test")
    assert await shutdown.sleep(30) is True


PROCESS = """
import asyncio
from orderly.platform.lifecycle import run_process

async def main(shutdown):
    shutdown.request("test")
    if {stuck}:
        await asyncio.Event().wait()

run_process(main, drain_seconds=0.1)
"""


def test_a_process_whose_drain_is_cut_short_exits_non_zero_and_a_clean_one_exits_0() -> None:
    for stuck, code in ((True, EXIT_DRAIN_CUT_SHORT), (False, 0)):
        done = subprocess.run(
            [sys.executable, "-c", PROCESS.format(stuck=stuck)], capture_output=True, text=True, check=False, timeout=60
        )
        assert done.returncode == code, done.stderr
