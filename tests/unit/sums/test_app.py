"""The /sum fast route reads its inputs as FastAPI does, and checks them before the service (no servers).

That it answers exactly like its FastAPI twin is proven in tests/unit/test_fast_path_parity.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.datastructures import Headers, QueryParams
from starlette.types import Scope

from orderly.sums.app import SumsState, create_app, read_sum_inputs
from orderly.sums.service import Answer
from orderly.sums.settings import SumsSettings
from tests.plumbing import asgi_call
from tests.unit.test_fast_path_parity import FakeSubmitter

# Characters that matter to query parsing (separators, escapes, '+', non-ASCII) plus a few plain ones.
QUERY_TEXT = st.text(alphabet="&=%+;2AaF09 é€nubmerikyx-", max_size=40)
HEADER_NAMES = st.sampled_from([b"idempotency-key", b"host", b"idempotency-keys", b"x-idempotency-key"])
HEADER_VALUES = st.binary(max_size=12)


def starlette_reads(scope: Scope) -> tuple[str | None, str | None, str | None]:
    params, headers = QueryParams(scope["query_string"]), Headers(scope=scope)
    return params.get("number"), params.get("ikey"), headers.get("idempotency-key")


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        (b"number=5&ikey=a", []),
        (b"number=5&number=6&ikey=a&ikey=b", []),  # a repeated parameter: the last value
        (b"ikey=&number", []),  # blank values are kept
        (b"ikey=%C3%A9+x%2B&number=%31", []),  # percent-decoded as UTF-8, '+' is a space
        (b"ikey=%FF", []),  # undecodable bytes are replaced, as parse_qsl does
        (b"ikey=\xe9", []),  # raw non-ASCII bytes of the query string are latin-1
        (b"", [(b"idempotency-key", b"first"), (b"idempotency-key", b"second")]),  # a repeated header: the first
        (b"", [(b"idempotency-key", b"\xe9\xff")]),  # header values are latin-1
        (b"", [(b"idempotency-key", b"")]),
    ],
)
def test_inputs_are_read_as_starlette_reads_query_and_headers(query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {"query_string": query, "headers": headers}
    assert read_sum_inputs(scope) == starlette_reads({**scope, "headers": list(headers)})


@given(QUERY_TEXT, st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4))
def test_any_query_and_headers_are_read_as_starlette_reads_them(query: str, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {"query_string": query.encode(), "headers": headers}
    assert read_sum_inputs(scope) == starlette_reads({**scope, "headers": list(headers)})


def http_scope(path: str = "/sum", query: bytes = b"", method: str = "GET", service: Any = None) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(b"host", b"test")],
        "state": {"sums": SumsState(service=service, store=None, cache=None)},  # type: ignore[arg-type]
    }


async def test_bad_input_is_400_before_the_service_is_called() -> None:
    service = FakeSubmitter(Answer(b"{}", replayed=False))
    sent = await asgi_call(create_app(SumsSettings()), http_scope(query=b"number=0", service=service))
    assert sent[0]["status"] == 400
    assert service.requests == []


async def test_an_unexpected_error_is_a_500_with_the_platforms_body_and_is_counted() -> None:
    labels = {"service": "sums", "route": "/sum", "status": "500"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    sent = await asgi_call(create_app(SumsSettings()), http_scope(service=FakeSubmitter(RuntimeError())))
    assert sent[0]["status"] == 500
    assert b'"error":"internal_error"' in sent[1]["body"]
    assert b"Traceback" not in sent[1]["body"]
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1
