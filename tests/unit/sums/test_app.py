"""The lean /sum handler answers exactly as the FastAPI route and its exception handlers would (no servers)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.responses import Response
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from orderly.sums import domain
from orderly.sums.app import ERROR_HANDLERS, SumFastPath, read_sum_inputs
from orderly.sums.domain import (
    FieldProblem,
    InvalidInputError,
    KeyReusedError,
    RequestInProgressError,
    StorageUnavailableError,
    SumRequest,
)
from orderly.sums.service import Answer
from tests.plumbing import asgi_call

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


class FakeService:
    def __init__(self, outcome: Answer | Exception) -> None:
        self.outcome = outcome
        self.requests: list[SumRequest] = []

    async def submit(self, request: SumRequest) -> Answer:
        self.requests.append(request)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class State:
    def __init__(self, service: FakeService) -> None:
        self.service = service


def http_scope(path: str = "/sum", query: bytes = b"", method: str = "GET", service: Any = None) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(b"host", b"test")],
        "state": {"sums": State(service)},
    }


async def never_called(_scope: Scope, _receive: Receive, _send: Send) -> None:
    raise AssertionError("the fast path should have answered")


@pytest.mark.parametrize("replayed", [False, True])
@pytest.mark.parametrize("path", ["/sum", "/test-sum-action"])
async def test_a_sum_is_answered_with_the_bytes_starlettes_response_sends(replayed: bool, path: str) -> None:
    service = FakeService(Answer(b'{"sum":42}', replayed=replayed))
    sent = await asgi_call(SumFastPath(never_called), http_scope(path, b"number=5&ikey=k", service=service))
    expected = Response(
        b'{"sum":42}', media_type="application/json", headers={"Idempotent-Replayed": "true"} if replayed else None
    )
    assert sent == await asgi_call(expected, http_scope(path))
    assert service.requests == [SumRequest(number=5, key="k")]


@pytest.mark.parametrize(
    "error",
    [
        InvalidInputError([FieldProblem("number", "must be an integer")]),
        KeyReusedError("used with a different request"),
        RequestInProgressError(retry_after_s=3),
        StorageUnavailableError("down"),
        domain.OverloadedError("10000 requests already wait for a commit"),
    ],
)
async def test_a_service_error_is_answered_by_the_routes_exception_handler(error: Exception) -> None:
    sent = await asgi_call(SumFastPath(never_called), http_scope(service=FakeService(error)))
    scope = http_scope()
    handled = await ERROR_HANDLERS[type(error)](Request(scope), error)
    assert sent == await asgi_call(handled, scope)


async def test_bad_input_is_400_before_the_service_is_called() -> None:
    service = FakeService(Answer(b"{}", replayed=False))
    sent = await asgi_call(SumFastPath(never_called), http_scope(query=b"number=0", service=service))
    assert sent[0]["status"] == 400
    assert service.requests == []


async def test_an_unexpected_error_is_a_500_with_the_platforms_body_and_is_counted() -> None:
    labels = {"service": "sums-test", "route": "/sum", "status": "500"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    sent = await asgi_call(
        SumFastPath(never_called, service="sums-test"), http_scope(service=FakeService(RuntimeError()))
    )
    assert sent[0]["status"] == 500
    assert b'"error":"internal_error"' in sent[1]["body"]
    assert b"Traceback" not in sent[1]["body"]
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1


@pytest.mark.parametrize(("path", "method"), [("/sum", "PUT"), ("/readyz", "GET"), ("/summary", "GET")])
async def test_other_paths_and_methods_go_on_to_fastapi(path: str, method: str) -> None:
    seen: list[str] = []

    async def inner(scope: Scope, _receive: Receive, _send: Send) -> None:
        seen.append(scope["path"])

    await asgi_call(SumFastPath(inner), http_scope(path, method=method))
    assert seen == [path]
