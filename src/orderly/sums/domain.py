"""Pure rules of the sums service: input validation, fingerprints, cache states and the batch plan. No I/O here."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_NUMBER = 10**18
MAX_KEY_CHARS = 255
_NATURAL = re.compile(r"[0-9]{1,19}")


class SumsError(Exception):
    """Base of every error the sums service reports to a caller."""


@dataclass(frozen=True)
class FieldProblem:
    field: str
    message: str


class InvalidInputError(SumsError):
    """The request itself is wrong (400); nothing was looked up or applied."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        super().__init__("invalid " + ", ".join(p.field for p in problems))
        self.problems = tuple(problems)


class KeyReusedError(SumsError):
    """The idempotency key was first used with a different request (422)."""


class RequestInProgressError(SumsError):
    """The first request with this key is still running (409); retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("a request with this idempotency key is in progress")
        self.retry_after_s = retry_after_s


class StorageUnavailableError(SumsError):
    """MySQL could not be reached or the transaction failed; nothing is known to be applied (503, retryable)."""


class OverloadedError(SumsError):
    """Too many requests already wait for a commit; this one was not queued, nothing applied (503, retryable)."""


class CommitOutcomeUnknownError(StorageUnavailableError):
    """MySQL's connection broke during the COMMIT: the request may have been applied (503, ``outcome_unknown``).

    A request with an idempotency key learns its outcome by being sent again with the same key."""


@dataclass(frozen=True)
class SumRequest:
    """A validated request: a natural number to add (None: only read) and an optional idempotency key."""

    number: int | None
    key: str | None

    @property
    def fingerprint(self) -> str:
        """What must match for a repeat to count as the same request: the number (absent counts as 'none')."""
        canonical = f"sum:number={'none' if self.number is None else self.number}"
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def amount(self) -> int:
        return self.number or 0


def parse_number(raw: str | None) -> int | None:
    """An integer 1 … 10^18 written in plain decimal digits; anything else is rejected, never coerced."""
    if raw is None:
        return None
    if not _NATURAL.fullmatch(raw):
        raise ValueError("must be an integer from 1 to 10^18 written in decimal digits")
    value = int(raw)
    if not 1 <= value <= MAX_NUMBER:
        raise ValueError("must be an integer from 1 to 10^18")
    return value


def parse_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if raw == "":
        raise ValueError("must not be empty")
    if len(raw) > MAX_KEY_CHARS:
        raise ValueError(f"must be at most {MAX_KEY_CHARS} characters")
    return raw


def parse_request(*, number: str | None, query_key: str | None, header_key: str | None) -> SumRequest:
    """Validate every input, naming each bad field; the key may come as query ``ikey`` or ``Idempotency-Key``."""
    problems: list[FieldProblem] = []
    parsed_number: int | None = None
    keys: dict[str, str | None] = {}
    try:
        parsed_number = parse_number(number)
    except ValueError as error:
        problems.append(FieldProblem("number", str(error)))
    for field, raw in (("ikey", query_key), ("Idempotency-Key", header_key)):
        try:
            keys[field] = parse_key(raw)
        except ValueError as error:
            problems.append(FieldProblem(field, str(error)))
    given = {v for v in keys.values() if v is not None}
    if len(given) > 1:
        problems.append(FieldProblem("Idempotency-Key", "differs from the ikey query parameter; send one key"))
    if problems:
        raise InvalidInputError(problems)
    return SumRequest(number=parsed_number, key=next(iter(given), None))


def render_sum(total: int) -> bytes:
    """The response body; the same bytes are stored and replayed."""
    return b'{"sum":%d}' % total


# --- Redis states of a key: an in-progress mark or a finished response. ---------------------------------------------


@dataclass(frozen=True)
class InProgressMark:
    owner: str
    fingerprint: str

    def encode(self) -> str:
        return f"P|{self.owner}|{self.fingerprint}"


@dataclass(frozen=True)
class StoredResponse:
    fingerprint: str
    body: bytes

    def encode(self) -> bytes:
        return b"R|" + self.fingerprint.encode() + b"|" + self.body


def decode_state(raw: bytes) -> InProgressMark | StoredResponse | None:
    """Parse a Redis value; anything unrecognised is None (treated as absent: MySQL still decides)."""
    kind, _, rest = raw.partition(b"|")
    first, sep, second = rest.partition(b"|")
    if not sep:
        return None
    if kind == b"P":
        return InProgressMark(owner=first.decode(), fingerprint=second.decode())
    if kind == b"R":
        return StoredResponse(fingerprint=first.decode(), body=second)
    return None


# --- Outcomes. -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    body: bytes


@dataclass(frozen=True)
class Replayed:
    body: bytes


@dataclass(frozen=True)
class Conflict:
    """The key exists with another fingerprint."""


Outcome = Applied | Replayed | Conflict


def decide_on_cached(state: InProgressMark | StoredResponse, *, fingerprint: str, pttl_ms: int) -> Replayed:
    """What a request does when Redis already holds its key: replay, or raise 422 / 409."""
    if state.fingerprint != fingerprint:
        raise KeyReusedError("this idempotency key was used with a different request")
    if isinstance(state, StoredResponse):
        return Replayed(state.body)
    raise RequestInProgressError(retry_after_s=max(1, math.ceil(pttl_ms / 1000)))


def outcome_of_stored(stored: StoredResponse, *, fingerprint: str) -> Replayed | Conflict:
    return Replayed(stored.body) if stored.fingerprint == fingerprint else Conflict()


@dataclass(frozen=True)
class BatchPlan:
    """What one transaction does: each request's outcome, the key rows to insert, the amount to add."""

    outcomes: tuple[Outcome, ...]
    new_keys: tuple[tuple[str, StoredResponse], ...]
    delta: int
    total_after: int


def plan_batch(total_before: int, requests: Sequence[SumRequest], stored: Mapping[str, StoredResponse]) -> BatchPlan:
    """Apply requests in order on top of ``total_before``: each new one gets its own post-update sum (a prefix sum);
    a key already stored, or already seen earlier in this batch, is replayed (same fingerprint) or a conflict."""
    known = dict(stored)
    running = total_before
    outcomes: list[Outcome] = []
    new_keys: list[tuple[str, StoredResponse]] = []
    for request in requests:
        if request.key is not None and request.key in known:
            outcomes.append(outcome_of_stored(known[request.key], fingerprint=request.fingerprint))
            continue
        running += request.amount
        body = render_sum(running)
        if request.key is not None:
            response = StoredResponse(fingerprint=request.fingerprint, body=body)
            known[request.key] = response
            new_keys.append((request.key, response))
        outcomes.append(Applied(body))
    return BatchPlan(tuple(outcomes), tuple(new_keys), running - total_before, running)
