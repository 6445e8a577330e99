"""The Edge in front of every API: body cap, request id, metrics and error answers, on fast routes and in FastAPI alike.

Raw ASGI, no servers: a small API with FastAPI routes and fast routes, called with bodies sent in chunks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import REGISTRY
from pydantic import BaseModel
from starlette.types import Message, Scope

from orderly.platform.http import Answer, Edge, FastRoute, create_app, json_answer
from orderly.platform.logging import RequestIdFilter
from tests.plumbing import asgi_call, http_scope

CAP = 1024


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
    yield {}


class Order(BaseModel):
    user: int


router = APIRouter()


@router.post("/model")
async def model(order: Order) -> dict[str, int]:
    return {"user": order.user}


@router.post("/raw")
async def raw(request: Request) -> dict[str, int]:
    return {"length": len(await request.body())}


@router.post("/fast")
async def fast_twin(request: Request) -> dict[str, Any]:
    return {"length": len(await request.body()), "by": "fastapi"}


@router.post("/lazy")
async def lazy_twin(request: Request) -> dict[str, int]:
    return {"length": len(await request.body())}


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret internals")


async def fast(_scope: Scope, body: bytes) -> Answer | None:
    if body == b"leave it":
        return None
    return json_answer(200, json.dumps({"length": len(body), "by": "fast"}).encode())


async def never_takes_it(_scope: Scope, _body: bytes) -> Answer | None:
    return None


async def fast_boom(_scope: Scope, _body: bytes) -> Answer:
    raise RuntimeError("secret internals")


FAST = [
    FastRoute("POST", "/fast", fast, reads_body=True),
    FastRoute("POST", "/lazy", never_takes_it),
    FastRoute("GET", "/fast-boom", fast_boom),
]


def api(service: str = "edge-test") -> Edge:
    return create_app(service=service, lifespan=lifespan, routers=[router], fast_routes=FAST, max_body_bytes=CAP)


def scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return http_scope(method, path, headers=headers or [])


def status(sent: list[Message]) -> int:
    return int(sent[0]["status"])


def body(sent: list[Message]) -> Any:
    return json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def header(sent: list[Message], name: bytes) -> bytes | None:
    return next((v for k, v in sent[0]["headers"] if k == name), None)


@pytest.mark.parametrize("path", ["/model", "/raw", "/fast", "/nowhere"])
async def test_a_content_length_over_the_cap_is_413_before_a_byte_is_read(path: str) -> None:
    received: list[bytes] = []
    request = scope("POST", path, [(b"content-length", b"%d" % (50 * 1024 * 1024))])
    sent = await asgi_call(api(), request, chunks=[b"x" * 1000] * 3, received=received)
    assert status(sent) == 413
    assert received == [], "nothing of the body was read"
    answer = body(sent)
    assert answer["error"] == "body_too_large"
    assert answer["fields"] == [{"field": "body", "message": f"the request body is larger than {CAP} bytes"}]


@pytest.mark.parametrize("path", ["/model", "/raw", "/fast", "/lazy"])
async def test_a_chunked_body_is_refused_with_413_as_soon_as_it_passes_the_cap(path: str) -> None:
    received: list[bytes] = []
    chunks = [b"x" * 400] * 100  # 40 KB, no Content-Length
    sent = await asgi_call(api(), scope("POST", path), chunks=chunks, received=received)
    assert status(sent) == 413
    assert body(sent)["error"] == "body_too_large"
    assert len(received) == 3, "reading stopped at the chunk that passed 1024 bytes"


@pytest.mark.parametrize(("path", "by"), [("/raw", None), ("/fast", "fast")])
async def test_a_chunked_body_up_to_the_cap_is_read_whole(path: str, by: str | None) -> None:
    sent = await asgi_call(api(), scope("POST", path), chunks=[b"x" * 512, b"y" * 512])
    assert status(sent) == 200
    assert body(sent)["length"] == CAP
    assert body(sent).get("by") == by


async def test_a_fast_route_that_leaves_the_input_hands_fastapi_the_body_it_read() -> None:
    sent = await asgi_call(api(), scope("POST", "/fast"), chunks=[b"leave", b" it"])
    assert body(sent) == {"length": 8, "by": "fastapi"}


async def test_a_client_gone_before_the_body_ended_gets_no_answer() -> None:
    sent = await asgi_call(api(), scope("POST", "/fast", [(b"content-length", b"100")]), chunks=[])
    assert sent == []


@pytest.mark.parametrize("path", ["/fast-boom", "/boom"])
async def test_an_unexpected_error_is_the_uniform_500_on_both_paths(path: str) -> None:
    sent = await asgi_call(api(), scope("GET", path))
    assert status(sent) == 500
    assert body(sent)["error"] == "internal_error"
    assert b"secret" not in sent[-1]["body"]


@pytest.mark.parametrize("path", ["/fast", "/raw"])
async def test_a_valid_request_id_is_sent_back_and_any_other_is_replaced(path: str) -> None:
    app = api()
    given = await asgi_call(app, scope("POST", path, [(b"x-request-id", b"abc-123.X:y_z")]))
    assert header(given, b"x-request-id") == b"abc-123.X:y_z"
    for bad in (b"", b"a b", b"x" * 129, "é".encode()):
        made = await asgi_call(app, scope("POST", path, [(b"x-request-id", bad)]))
        assert header(made, b"x-request-id") not in (None, bad)
    first = header(await asgi_call(app, scope("POST", path)), b"x-request-id")
    second = header(await asgi_call(app, scope("POST", path)), b"x-request-id")
    assert first
    assert second
    assert first != second


@pytest.mark.parametrize("path", ["/fast-boom", "/boom"])
async def test_a_log_line_written_while_answering_carries_the_request_id(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.ERROR):
        await asgi_call(api(), scope("GET", path, [(b"x-request-id", b"trace-me")]))
    assert [getattr(r, "request_id", None) for r in caplog.records if r.msg == "unhandled error"] == ["trace-me"]


@pytest.mark.parametrize(
    ("method", "path", "route", "expected"),
    [
        ("POST", "/fast", "/fast", "200"),
        ("POST", "/raw", "/raw", "200"),
        ("GET", "/fast-boom", "/fast-boom", "500"),
        ("GET", "/boom", "/boom", "500"),
        ("GET", "/nowhere", "unmatched", "404"),
    ],
)
async def test_every_request_is_counted_under_its_route_template(
    method: str, path: str, route: str, expected: str
) -> None:
    labels = {"service": "edge-metrics", "route": route, "status": expected}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    await asgi_call(api("edge-metrics"), scope(method, path))
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1


async def test_a_refused_body_is_counted_under_its_route_template() -> None:
    labels = {"service": "edge-413", "route": "/model", "status": "413"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    await asgi_call(api("edge-413"), scope("POST", "/model", [(b"content-length", b"999999")]))
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1
