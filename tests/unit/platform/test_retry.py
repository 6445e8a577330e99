"""The retry helper: one log line when a dependency goes down, one when it is back, a stop ends the wait at once."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import nats.errors
import pytest

from orderly.platform.errors import PermanentError
from orderly.platform.lifecycle import Shutdown
from orderly.platform.retry import OutageLog, Retry, StoppedError

DOWN = asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "orderly.platform.retry"]


async def test_an_outage_logs_one_line_down_and_one_line_back_whatever_the_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    retry = Retry(Shutdown(), first=0.001, cap=0.002)
    failures = iter([DOWN, ConnectionRefusedError(111, "Connect call failed"), DOWN, DOWN, None])

    async def attempt() -> str:
        failure = next(failures)
        if failure is not None:
            raise failure
        return "done"

    assert await retry.call(attempt, dependency="postgres") == "done"
    logged = lines(caplog)
    assert len(logged) == 2, logged
    assert logged[0].startswith("postgres unavailable: terminating connection due to administrator command; retrying")
    assert logged[1].startswith("postgres reachable again after ")
    assert logged[1].endswith(" s")
    assert retry.down == ()


async def test_an_error_that_does_not_say_where_is_logged_with_the_address_the_caller_gives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    retry = Retry(Shutdown(), first=0.001, cap=0.002)
    failures = iter([nats.errors.NoServersError(), nats.errors.NoServersError(), None])

    async def attempt() -> None:
        failure = next(failures)
        if failure is not None:
            raise failure

    await retry.call(attempt, dependency="nats", address="127.0.0.1:24222")
    down = [r for r in caplog.records if r.name == "orderly.platform.retry" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in down] == [
        "nats at 127.0.0.1:24222 unavailable: nats: no servers available for connection; retrying"
    ]
    assert down[0].address == "127.0.0.1:24222"


async def test_the_backoff_doubles_to_its_cap_and_starts_over_after_a_success() -> None:
    retry = Retry(Shutdown(), first=0.5, cap=3.0)
    assert [retry.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    retry.ok()
    assert retry.next_delay() == 0.5


async def test_a_stop_ends_the_wait_at_once() -> None:
    shutdown = Shutdown()
    retry = Retry(shutdown, first=30, cap=30)

    async def attempt() -> None:
        raise DOWN

    asyncio.get_running_loop().call_later(0.05, shutdown.request, "test")
    started = time.monotonic()
    with pytest.raises(StoppedError):
        await retry.call(attempt)
    assert time.monotonic() - started < 5


async def test_a_permanent_fault_raises_the_line_that_names_the_fix_without_waiting() -> None:
    retry = Retry(Shutdown(), first=30, cap=30)

    async def attempt() -> None:
        raise asyncpg.exceptions.InvalidCatalogNameError('database "orderly_ingest" does not exist')

    with pytest.raises(PermanentError, match=r'^database "orderly_ingest" does not exist: run `orderly init`$'):
        await asyncio.wait_for(retry.call(attempt), 5)


async def test_poison_is_raised_to_the_caller_as_it_was() -> None:
    retry = Retry(Shutdown(), first=30, cap=30)
    bad = asyncpg.exceptions.CheckViolationError("new row violates check constraint")

    async def attempt() -> None:
        raise bad

    with pytest.raises(asyncpg.exceptions.CheckViolationError) as caught:
        await asyncio.wait_for(retry.call(attempt), 5)
    assert caught.value is bad


def test_an_outage_seen_by_many_requests_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    outages = OutageLog(quiet_s=60)
    for _ in range(100):
        outages.note("redis", ConnectionRefusedError(111, "Connect call failed"), "reading PostgreSQL uncached")
    assert lines(caplog) == ["redis unavailable: [Errno 111] Connect call failed; reading PostgreSQL uncached"]


def test_a_new_outage_after_a_quiet_spell_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outages = OutageLog(quiet_s=5, clock=lambda: now[0])
    outages.note("postgres", DOWN, "answering 503")
    now[0] += 4  # still failing within the quiet spell: the same outage
    outages.note("postgres", DOWN, "answering 503")
    now[0] += 6  # a failure after 6 s without one: a new outage
    outages.note("postgres", DOWN, "answering 503")
    assert len(lines(caplog)) == 2
