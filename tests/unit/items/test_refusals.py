"""Which ClickHouse failures park an event (its data is refused) and which are waited out (an outage)."""

from __future__ import annotations

import pytest
from clickhouse_driver.errors import ErrorCodes, NetworkError, ServerException, SocketTimeoutError, TypeMismatchError

from orderly.items.audit import refused
from orderly.items.changelog import MalformedEventError, row_from_payload


@pytest.mark.parametrize(
    "error",
    [
        NetworkError("Connection refused (127.0.0.1:29000)"),
        SocketTimeoutError("timed out"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        EOFError("Unexpected EOF while reading bytes"),
        ServerException("Table orderly.item_events doesn't exist", code=ErrorCodes.UNKNOWN_TABLE),
        ServerException("Too many simultaneous queries", code=ErrorCodes.TOO_MANY_SIMULTANEOUS_QUERIES),
        ServerException("Memory limit exceeded", code=ErrorCodes.MEMORY_LIMIT_EXCEEDED),
    ],
)
def test_an_outage_or_a_server_side_problem_is_never_a_reason_to_park(error: BaseException) -> None:
    assert not refused(error)


@pytest.mark.parametrize(
    "error",
    [
        TypeMismatchError("Column priority: 'i' format requires -2147483648 <= number <= 2147483647"),
        ServerException("Cannot parse input", code=ErrorCodes.CANNOT_PARSE_INPUT_ASSERTION_FAILED),
        ServerException("Value out of range", code=ErrorCodes.VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE),
        OverflowError("int too big to convert"),
    ],
)
def test_a_refusal_of_the_rows_values_parks_the_event(error: BaseException) -> None:
    assert refused(error)


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[1, 2]", b'{"eventId": "x"}', b'{"eventId": 1, "itemId": 1}', b"\xff\xfe"],
)
def test_a_payload_that_is_not_a_change_event_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedEventError):
        row_from_payload(payload)
