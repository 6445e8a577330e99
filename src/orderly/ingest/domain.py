"""Pure rules of ingest: what a valid request is, and the shape of a queued request. No I/O here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote_plus
from uuid import UUID

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")


class IngestError(Exception):
    """Base of the service's errors."""


class InvalidRequestError(IngestError):
    """The request breaks the contract; ``status`` is 400, 413 or 414 and ``field`` names the parameter."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


class BrokerUnavailableError(IngestError):
    """The broker did not confirm the message; the client may retry later (retryable)."""


class BrokerNotConnectedError(BrokerUnavailableError):
    """The API has no channel to the broker (it has not answered since the process started): nothing was sent."""


class OutcomeUnknownError(BrokerUnavailableError):
    """The broker did not confirm and the refusal could not be recorded (PostgreSQL unreachable too).

    The message may still be on the broker and be stored later; ``token`` lets the client recognise it in the events.
    """

    def __init__(self, token: UUID) -> None:
        super().__init__(f"unconfirmed publish of {token} could not be revoked")
        self.token = token


class PoisonMessageError(IngestError):
    """A queued message cannot be stored (permanent); strict order forbids going past it."""


class MalformedMessageError(PoisonMessageError):
    """A queued message body is not a request this service wrote."""


class RejectedFrameError(IngestError):
    """A request a client wrote straight into the queue (STOMP) breaks the contract; ``reason`` says how.

    Such a request is the client's fault, not the line's: it is dead-lettered with its reason and the line goes on.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AcceptedRequest:
    token: UUID
    numbers: tuple[int, ...]
    accepted_at: datetime

    def to_message(self) -> bytes:
        # Built by hand (the API's hot path): a UUID, integers and an ISO timestamp need no escaping, so these are the
        # bytes json.dumps(body, separators=(",", ":")) would give (tested).
        return b'{"token":"%s","numbers":[%s],"accepted_at":"%s"}' % (
            str(self.token).encode(),
            ",".join(map(str, self.numbers)).encode(),
            self.accepted_at.isoformat().encode(),
        )

    @classmethod
    def from_message(cls, body: bytes) -> AcceptedRequest:
        try:
            data = json.loads(body)
            numbers = tuple(data["numbers"])
            accepted_at = datetime.fromisoformat(data["accepted_at"])
            token = UUID(data["token"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedMessageError(f"not an ingest request: {exc}") from exc
        if not numbers or not all(type(n) is int and INT64_MIN <= n <= INT64_MAX for n in numbers):
            raise MalformedMessageError("not an ingest request: numbers must be a non-empty list of int64")
        if accepted_at.tzinfo is None:
            raise MalformedMessageError("not an ingest request: accepted_at has no time zone")
        return cls(token=token, numbers=numbers, accepted_at=accepted_at)

    @classmethod
    def from_stomp(
        cls, body: bytes, *, token: object, received_at: datetime, max_numbers: int, max_body_bytes: int
    ) -> AcceptedRequest:
        """A request SENT over STOMP: the body is a JSON array of int64, the ``token`` header the client's UUID.

        The broker's confirm (the client's RECEIPT) was its acceptance; the queue position is its order. The worker
        only learns of it later, so ``accepted_at`` is when the worker received it (informational, as for HTTP).
        """
        if not isinstance(token, str) or not token:
            raise RejectedFrameError("missing token header: send a UUID in the 'token' header")
        try:
            parsed_token = UUID(token)
        except ValueError:
            raise RejectedFrameError(f"token header is not a UUID: {token[:40]!r}") from None
        if len(body) > max_body_bytes:
            raise RejectedFrameError(f"body is longer than {max_body_bytes} bytes")
        try:
            data = json.loads(body)
        except ValueError:
            raise RejectedFrameError("body is not JSON: send a JSON array of integers, e.g. [7,-3,42]") from None
        if not isinstance(data, list) or not data:
            raise RejectedFrameError("no integers: the body must be a non-empty JSON array of integers")
        if len(data) > max_numbers:
            raise RejectedFrameError(f"more than {max_numbers} numbers in one request")
        for index, value in enumerate(data):
            if type(value) is not int:
                raise RejectedFrameError(f"numbers[{index}] is not an integer: {json.dumps(value)[:40]}")
            if not INT64_MIN <= value <= INT64_MAX:
                raise RejectedFrameError(f"numbers[{index}] is outside the signed 64-bit range")
        return cls(token=parsed_token, numbers=tuple(data), accepted_at=received_at)


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What one batch insert did: how many requests were new, and which positions (0-based) were skipped."""

    inserted: int
    skipped: tuple[int, ...]


def parse_int64(text: str, field: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise InvalidRequestError(400, field, f"{field} must be an integer, got {text[:40]!r}")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidRequestError(400, field, f"{field} is outside the signed 64-bit range")
    return value


def parse_numbers(query: bytes, *, max_numbers: int, max_query_bytes: int) -> tuple[int, ...]:
    """The numbers of ``?n=7&n=-3`` or ``?numbers=7,-3`` (both may be combined, in order of appearance)."""
    if len(query) > max_query_bytes:
        raise InvalidRequestError(414, "query", f"the query string is longer than {max_query_bytes} bytes")
    texts: list[tuple[str, str]] = []
    for pair in query.split(b"&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition(b"=")
        key = unquote_plus(raw_key.decode("latin-1"))
        if key == "n":
            texts.append(("n", unquote_plus(raw_value.decode("latin-1"))))
        elif key == "numbers":
            value = unquote_plus(raw_value.decode("latin-1"))
            texts.extend(("numbers", part) for part in value.split(","))
        if len(texts) > max_numbers:
            raise InvalidRequestError(413, texts[-1][0], f"more than {max_numbers} numbers in one request")
    if not texts:
        raise InvalidRequestError(400, "n", "give one or more integers as n=… (repeated) or numbers=a,b,c")
    seen: dict[str, int] = {}
    numbers = []
    for field, text in texts:
        index = seen.get(field, 0)
        seen[field] = index + 1
        numbers.append(parse_int64(text.strip() if field == "numbers" else text, f"{field}[{index}]"))
    return tuple(numbers)
