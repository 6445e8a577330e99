"""Which /items/list queries the fast path takes as they are, and which it leaves to FastAPI's validation."""

from __future__ import annotations

import pytest

from orderly.items.app import list_page


def test_absent_parameters_take_the_contract_defaults() -> None:
    assert list_page(b"") == (10, 1)
    assert list_page(b"other=1") == (10, 1)


def test_plain_digits_in_range_are_taken() -> None:
    assert list_page(b"limit=1000&offset=2147483648") == (1000, 2**31)
    assert list_page(b"offset=3&limit=05") == (5, 3)


def test_a_repeated_parameter_counts_with_its_last_value_as_starlette_reads_it() -> None:
    assert list_page(b"limit=3&limit=7") == (7, 1)
    assert list_page(b"limit=%37") == (7, 1)


@pytest.mark.parametrize(
    "query",
    [
        b"limit=",
        b"limit=0",
        b"limit=1001",
        b"offset=0",
        b"offset=2147483649",
        b"limit=+5",
        b"limit=%205",
        b"limit=5_0",
        b"limit=ten",
        b"limit=5.0",
        "limit=\u0663".encode(),
        b"limit=3&limit=x",
    ],
)
def test_anything_else_is_left_to_fastapi_which_answers_the_400_naming_the_field(query: bytes) -> None:
    assert list_page(query) is None
