"""The request contract, without servers: what is accepted, and which parameter a rejection names."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import UUID

import pytest

from orderly.ingest.domain import (
    INT64_MAX,
    INT64_MIN,
    AcceptedRequest,
    InvalidRequestError,
    MalformedMessageError,
    parse_numbers,
)


def parse(query: str) -> tuple[int, ...]:
    return parse_numbers(query.encode(), max_numbers=1000, max_query_bytes=16 * 1024)


def rejection(query: str) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        parse(query)
    return caught.value


def test_repeated_n_keeps_the_given_order() -> None:
    assert parse("n=7&n=-3&n=42") == (7, -3, 42)


def test_numbers_list_and_repeated_n_are_both_accepted() -> None:
    assert parse("numbers=7,-3,42") == (7, -3, 42)
    assert parse("numbers=%2B5%2C6&n=1") == (5, 6, 1)


def test_int64_bounds_are_accepted() -> None:
    assert parse(f"n={INT64_MIN}&n={INT64_MAX}") == (INT64_MIN, INT64_MAX)


def test_other_parameters_are_ignored() -> None:
    assert parse("x=1&n=2") == (2,)


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("", 400, "n"),
        ("x=1", 400, "n"),
        ("n=", 400, "n[0]"),
        ("n=1&n=abc", 400, "n[1]"),
        ("n=1.5", 400, "n[0]"),
        ("n=1_000", 400, "n[0]"),
        ("n=%201", 400, "n[0]"),
        (f"n={INT64_MAX + 1}", 400, "n[0]"),
        (f"n={INT64_MIN - 1}", 400, "n[0]"),
        ("numbers=1,,2", 400, "numbers[1]"),
        ("n=1&" * 1001, 413, "n"),
        ("n=" + "1" * 17000, 414, "query"),
    ],
)
def test_bad_input_is_rejected_naming_the_parameter(query: str, status: int, field: str) -> None:
    error = rejection(query)
    assert (error.status, error.field) == (status, field)


def test_thousand_numbers_are_accepted() -> None:
    assert len(parse("&".join(["n=1"] * 1000))) == 1000


def test_queued_message_round_trips() -> None:
    request = AcceptedRequest(
        token=UUID("01a21dda-9b00-7737-9a3d-1e2e7a2a2b10"), numbers=(1, INT64_MIN), accepted_at=datetime.now(UTC)
    )
    assert AcceptedRequest.from_message(request.to_message()) == request


def test_queued_message_is_the_compact_json_encoding() -> None:
    # to_message builds the JSON by hand for speed; it must stay byte-for-byte what json.dumps gives.
    request = AcceptedRequest(
        token=UUID("01a21dda-9b00-7737-9a3d-1e2e7a2a2b10"),
        numbers=(0, -1, 7, INT64_MIN, INT64_MAX),
        accepted_at=datetime.now(UTC),
    )
    body = {
        "token": str(request.token),
        "numbers": list(request.numbers),
        "accepted_at": request.accepted_at.isoformat(),
    }
    assert request.to_message() == json.dumps(body, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"token": "x", "numbers": [1], "accepted_at": "2026-01-01T00:00:00+00:00"}',
        b'{"token": "01a21dda-9b00-7737-9a3d-1e2e7a2a2b10", "numbers": [], "accepted_at": "2026-01-01T00:00:00+00:00"}',
        b'{"token": "01a21dda-9b00-7737-9a3d-1e2e7a2a2b10", "numbers": [1.5], "accepted_at": "2026-01-01T00:00:00Z"}',
        b'{"token": "01a21dda-9b00-7737-9a3d-1e2e7a2a2b10", "numbers": [1], "accepted_at": "2026-01-01T00:00:00"}',
    ],
)
def test_foreign_message_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        AcceptedRequest.from_message(body)
