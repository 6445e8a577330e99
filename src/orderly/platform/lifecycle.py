"""Process lifecycle: signals become a stop event, work drains within a deadline, resources close in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import uvloop

if TYPE_CHECKING:
    from orderly.platform.errors import Permanent

log = logging.getLogger(__name__)

DEFAULT_DRAIN_SECONDS = 10.0
# The exit code of a process whose drain ran out of time and cancelled in-flight work (as GNU timeout's 124): its
# supervisor sees that the stop was not clean.
EXIT_DRAIN_CUT_SHORT = 124
# A permanent fault (database missing, credentials refused): restarting will not help until the operator acts.
# sysexits' EX_CONFIG, so a supervisor can tell it from a crash.
EXIT_PERMANENT = 78
# A one-shot step (a migration, topic creation) found a server it needs away: run it again once the server is up.
# sysexits' EX_TEMPFAIL.
EXIT_UNAVAILABLE = 75

T = TypeVar("T")


class Shutdown:
    """A stop request shared by a process's loops: set by SIGTERM/SIGINT, awaited or polled by the work."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            log.info("shutdown requested", extra={"reason": reason})
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless a stop comes first; returns True when the process should stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=seconds)
        return self._event.is_set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request, sig.name)


async def drain(main: Coroutine[Any, Any, None], shutdown: Shutdown, *, deadline: float) -> bool:
    """Run ``main`` until it returns; after a stop request give it ``deadline`` seconds to finish, then cancel it.

    Returns True when ``main`` finished on its own, False when the deadline cut it short.
    """
    task = asyncio.create_task(main)
    stop = asyncio.create_task(shutdown.wait())
    try:
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=deadline)
            except TimeoutError:
                log.warning("drain deadline passed, cancelling in-flight work", extra={"deadline_s": deadline})
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return False
        else:
            await task
    finally:
        stop.cancel()
    return True


def run_process(main: Callable[[Shutdown], Awaitable[None]], *, drain_seconds: float = DEFAULT_DRAIN_SECONDS) -> None:
    """The entry of every long-running process: uvloop, signal handlers, a bounded drain, exit 0 on a clean stop.

    A permanent fault (``PermanentError``) ends the process with one line naming the fix and ``EXIT_PERMANENT``.

    A drain cut short by its deadline exits with ``EXIT_DRAIN_CUT_SHORT``.
    """
    from orderly.platform.errors import PermanentError

    async def runner() -> bool:
        shutdown = Shutdown()
        shutdown.install_signal_handlers()

        async def body() -> None:
            await main(shutdown)

        return await drain(body(), shutdown, deadline=drain_seconds)

    try:
        clean = uvloop.run(runner())
    except PermanentError as exc:
        _stop_permanent(exc.fault)
    if not clean:
        raise SystemExit(EXIT_DRAIN_CUT_SHORT)


def run_oneshot(step: Callable[[], T]) -> T:
    """The entry of a one-shot command (migrations, topic creation): ``step()``'s result, or one line and an exit code.

    A dependency that is away (connection refused, server starting, broker down) ends it with one line naming the
    server and ``EXIT_UNAVAILABLE``; a permanent fault (credentials refused, a topic of the wrong shape) with its fix
    and ``EXIT_PERMANENT``. Neither is a bug, so neither prints a traceback; anything else is raised as it is.
    """
    from orderly.platform.errors import Permanent, Transient, classify

    try:
        return step()
    except Exception as exc:
        fault = classify(exc)
        if isinstance(fault, Transient):
            log.critical(
                "%s is unavailable (%s): start it, or check its host and port in the settings, then run this again",
                fault.dependency,
                fault.reason,
                extra={"dependency": fault.dependency},
            )
            raise SystemExit(EXIT_UNAVAILABLE) from None
        if isinstance(fault, Permanent):
            _stop_permanent(fault)
        raise


def _stop_permanent(fault: Permanent) -> NoReturn:
    """End the process on a permanent fault: one line naming the fix, then ``EXIT_PERMANENT``."""
    log.critical("%s", fault.message, extra={"dependency": fault.dependency, "fix": fault.fix})
    raise SystemExit(EXIT_PERMANENT) from None
