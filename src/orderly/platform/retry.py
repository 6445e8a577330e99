"""The one retry helper of every background loop: backoff, a sleep a stop interrupts, one log line per state change.

A loop that needs servers wraps its attempts in a ``Retry``. After a failed attempt it calls ``wait(exc)``:

* a **transient** fault marks its dependency down (one WARNING line, ``postgres unavailable: <reason>; retrying``,
  or ``nats at 127.0.0.1:24222 unavailable: …`` when the caller names the address its error does not), then
  sleeps the next backoff delay (``first`` doubling up to ``cap``) unless a stop comes first;
* a **permanent** fault raises ``PermanentError`` (the process exits with one line naming the fix);
* **poison** (or anything unknown) is re-raised for the caller's own rule.

After a successful attempt it calls ``ok()``: every dependency that was down is logged back once
(``postgres reachable again after 4.2 s``) and the backoff starts from ``first`` again. Nothing is logged per attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from orderly.platform.errors import Permanent, PermanentError, Poison, Transient, classify
from orderly.platform.lifecycle import Shutdown

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoppedError(Exception):
    """A stop was requested while waiting for a dependency; the attempt was not made again."""


class Retry:
    """Waits out the transient failures of one loop's dependencies (see the module docstring)."""

    def __init__(
        self,
        shutdown: Shutdown,
        *,
        dependency: str | None = None,
        first: float = 0.1,
        cap: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.shutdown = shutdown
        self.dependency = dependency  # named in the log when an exception does not tell which server it came from
        self.first, self.cap = first, cap
        self._log = logger or log
        self._delay = 0.0
        self._down: dict[str, float] = {}  # dependency → when it went down (monotonic)

    @property
    def down(self) -> tuple[str, ...]:
        """The dependencies that failed since the last successful attempt."""
        return tuple(self._down)

    def next_delay(self) -> float:
        self._delay = self.first if self._delay == 0 else min(self._delay * 2, self.cap)
        return self._delay

    def failed(self, fault: Transient, *, address: str | None = None) -> None:
        """Note a transient fault; logs only when its dependency was not already known to be down.

        ``address`` (host:port, never a URL with credentials) is for errors that do not say where they went, such as
        nats-py's "no servers available for connection"."""
        if fault.dependency not in self._down:
            self._down[fault.dependency] = time.monotonic()
            where = f"{fault.dependency} at {address}" if address else fault.dependency
            extra = {"dependency": fault.dependency, "error": fault.reason} | ({"address": address} if address else {})
            self._log.warning("%s unavailable: %s; retrying", where, fault.reason, extra=extra)

    def ok(self) -> None:
        """An attempt succeeded: log each dependency that is back, and start the backoff over."""
        self._delay = 0.0
        if not self._down:
            return
        now = time.monotonic()
        for dependency, since in self._down.items():
            self._log.info(
                "%s reachable again after %.1f s",
                dependency,
                now - since,
                extra={"dependency": dependency, "down_s": round(now - since, 3)},
            )
        self._down.clear()

    async def wait(self, exc: BaseException, *, dependency: str | None = None, address: str | None = None) -> bool:
        """After a failed attempt (call it from the ``except`` block): True when a stop came during the wait."""
        fault = classify(exc, dependency=dependency or self.dependency)
        if isinstance(fault, Permanent):
            raise PermanentError(fault) from exc
        if isinstance(fault, Poison):
            raise exc
        self.failed(fault, address=address)
        return await self.shutdown.sleep(self.next_delay())

    async def call(
        self, attempt: Callable[[], Awaitable[T]], *, dependency: str | None = None, address: str | None = None
    ) -> T:
        """``attempt()`` until it succeeds; raises ``StoppedError`` when a stop came while waiting."""
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                if await self.wait(exc, dependency=dependency, address=address):
                    raise StoppedError from exc
                continue
            self.ok()
            return result


class OutageLog:
    """For code that answers rather than waits (an API, a cache fallback): one WARNING line when a dependency starts
    failing, the next only after it went ``quiet_s`` without a failure, so an outage under load is not a line per
    request."""

    def __init__(
        self, *, quiet_s: float = 5.0, logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.quiet_s = quiet_s
        self._log = logger or log
        self._clock = clock
        self._last: dict[str, float] = {}

    def note(self, dependency: str, exc: BaseException, what: str) -> None:
        """``dependency`` failed with ``exc``; ``what`` says what is done instead (e.g. "answering 503")."""
        now = self._clock()
        last = self._last.get(dependency)
        self._last[dependency] = now
        if last is None or now - last > self.quiet_s:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            self._log.warning(
                "%s unavailable: %s; %s",
                dependency,
                reason,
                what,
                extra={"dependency": dependency, "error_type": type(exc).__name__},
            )
