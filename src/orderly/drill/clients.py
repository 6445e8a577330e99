"""Careful clients: every answer classified and counted, so a retry policy can tell "not applied" from "unknown".

- ``ok`` (2xx) and ``rejected`` (4xx) are definite answers.
- ``unavailable`` (503 without ``outcome_unknown``) means the service did not apply the request: retry it after
  ``Retry-After``.
- ``refused`` means the connection was never made (the process is down): the request was not delivered, retry it.
- ``unknown`` means the request may or may not have been applied: the connection broke after it was sent, it timed
  out, or the service said ``outcome_unknown``. A keyed request (sums) is retried with the same key; an unkeyed one is
  counted apart and a retry is a new request.
- ``server_error`` is any other 5xx: a bug as far as the client can tell (its outcome is unknown too).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx

RETRY_AFTER_CAP_S = 2.0  # a drill waits at most this long between attempts, whatever Retry-After says


class Outcome(Enum):
    OK = "ok"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    REFUSED = "refused"
    UNKNOWN = "unknown"
    SERVER_ERROR = "server_error"


@dataclass
class Tally:
    """What one pipeline's clients saw."""

    requests: int = 0
    ok: int = 0
    rejected: int = 0  # 4xx
    unavailable: int = 0  # 503
    refused: int = 0  # connection refused: not delivered
    unknown: int = 0  # outcome unknown (cut connection, timeout, outcome_unknown)
    server_errors: int = 0  # 5xx other than 503

    def count(self, outcome: Outcome) -> None:
        self.requests += 1
        field = "server_errors" if outcome is Outcome.SERVER_ERROR else outcome.value
        setattr(self, field, getattr(self, field) + 1)

    def line(self) -> str:
        return (
            f"requests {self.requests}: ok {self.ok}, 503 {self.unavailable}, other 5xx {self.server_errors}, "
            f"unknown outcome {self.unknown}, refused {self.refused}, 4xx {self.rejected}"
        )


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    response: httpx.Response | None = None

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.status_code

    def body(self) -> dict[str, Any]:
        """The JSON object of the answer ({} when there is none)."""
        if self.response is None:
            return {}
        with contextlib.suppress(ValueError):
            data = self.response.json()
            if isinstance(data, dict):
                return data
        return {}

    def retry_after(self, default: float = 0.2) -> float:
        """How long to wait before retrying: the server's Retry-After, capped."""
        raw = self.response.headers.get("Retry-After") if self.response is not None else None
        try:
            wait = float(raw) if raw is not None else default
        except ValueError:
            wait = default
        return max(0.0, min(wait, RETRY_AFTER_CAP_S))


def classify(response: httpx.Response) -> Outcome:
    code = response.status_code
    if code < 400:
        return Outcome.OK
    if code < 500:
        return Outcome.REJECTED
    if code == 503:
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and body.get("error") == "outcome_unknown":
                return Outcome.UNKNOWN
        return Outcome.UNAVAILABLE
    return Outcome.SERVER_ERROR


async def call(http: httpx.AsyncClient, tally: Tally, method: str, url: str, **kwargs: Any) -> Answer:
    """One attempt, classified and counted; never raises for what the network or the server did."""
    try:
        response = await http.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        tally.count(Outcome.REFUSED)
        return Answer(Outcome.REFUSED)
    except httpx.TransportError:
        tally.count(Outcome.UNKNOWN)
        return Answer(Outcome.UNKNOWN)
    answer = Answer(classify(response), response)
    tally.count(answer.outcome)
    return answer


class Pace:
    """At most ``rate`` requests a second from one client: a bounded load that leaves the machine room to recover."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = time.monotonic()

    async def wait(self) -> None:
        self.next_at = max(self.next_at + self.interval, time.monotonic())
        delay = self.next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
