"""Exponential backoff with a cap, for the relay and audit loops when a server is away."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    first: float = 0.1
    cap: float = 5.0
    _next: float = 0.0

    def delay(self) -> float:
        """The next wait: first, then doubling, up to the cap."""
        self._next = self.first if self._next == 0 else min(self._next * 2, self.cap)
        return self._next

    def reset(self) -> None:
        self._next = 0.0
