"""Lifecycle: a stop request lets work finish within the drain deadline, then cancels what is left; a one-shot step
ends on a fault with one line and an exit code that says which kind."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Callable

import pytest

from orderly.platform.errors import DependencyUnavailableError, Permanent, PermanentError
from orderly.platform.lifecycle import (
    EXIT_DRAIN_CUT_SHORT,
    EXIT_PERMANENT,
    EXIT_UNAVAILABLE,
    Shutdown,
    drain,
    run_oneshot,
)


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


def test_a_one_shot_step_returns_what_its_work_returns() -> None:
    assert run_oneshot(lambda: [1, 2]) == [1, 2]


def _refused() -> None:
    raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")


def _denied() -> None:
    raise PermanentError(Permanent("postgres", "password authentication failed", "check the password"))


@pytest.mark.parametrize(
    ("work", "code", "line"),
    [
        (
            _refused,
            EXIT_UNAVAILABLE,
            "a dependency is unavailable ([Errno 111] Connect call failed ('127.0.0.1', 9)): start it, or check its"
            " host and port in the settings, then run this again",
        ),
        (_denied, EXIT_PERMANENT, "password authentication failed: check the password"),
    ],
    ids=["server-away", "permanent"],
)
def test_a_one_shot_step_that_meets_a_fault_exits_with_its_code_and_one_line(
    caplog: pytest.LogCaptureFixture, work: Callable[[], None], code: int, line: str
) -> None:
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        run_oneshot(work)
    assert stopped.value.code == code
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records] == [("CRITICAL", line, None)]


def test_a_one_shot_step_names_the_server_it_could_not_reach(caplog: pytest.LogCaptureFixture) -> None:
    def away() -> None:
        raise DependencyUnavailableError("nats", "no servers available for connection")

    with pytest.raises(SystemExit) as stopped:
        run_oneshot(away)
    assert stopped.value.code == EXIT_UNAVAILABLE
    assert caplog.records[-1].getMessage().startswith("nats is unavailable (no servers available for connection): ")


def test_a_one_shot_step_raises_an_error_that_is_not_a_fault_of_a_server() -> None:
    def bug() -> None:
        raise KeyError("a bug, not an outage")

    with pytest.raises(KeyError):
        run_oneshot(bug)
