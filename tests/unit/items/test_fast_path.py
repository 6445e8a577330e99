"""The lean ASGI path in front of the items app: it answers on its own, with no FastAPI layer around it."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from prometheus_client import REGISTRY
from starlette.types import Receive, Scope, Send

from orderly.items.app import ItemsFastPath, Runtime
from orderly.items.settings import ItemsOptions
from tests.plumbing import asgi_call


class BrokenCache:
    """A cache whose lookup fails with an error no handler knows (not a Redis error: that one falls back)."""

    async def lookup(self, **_page: int) -> tuple[int, bytes | None]:
        raise RuntimeError("a bug")


async def never_called(_scope: Scope, _receive: Receive, _send: Send) -> None:
    raise AssertionError("the request went on to FastAPI")


async def test_an_unexpected_error_on_the_fast_path_is_a_500_with_the_platforms_body_and_is_counted() -> None:
    runtime: Any = Runtime(
        pool=None,
        redis=None,
        cache=BrokenCache(),
        changelog=None,
        flights=None,
        options=ItemsOptions(),
    )
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/items/list",
        "query_string": b"limit=5",
        "headers": [],
        "state": {"items": runtime},
    }
    labels = {"service": "items-test", "route": "/items/list", "status": "500"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    sent = await asgi_call(ItemsFastPath(never_called, service="items-test"), scope)
    assert sent[0]["status"] == 500
    assert b'"error":"internal_error"' in sent[1]["body"]
    assert b"a bug" not in sent[1]["body"]
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1


class DownPool:
    """A pool whose server is restarting: what asyncpg raises on a connection the server terminated."""

    async def fetchval(self, *_args: Any) -> Any:
        raise asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")

    def acquire(self) -> Any:
        raise asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")


class EmptyCache:
    async def lookup(self, **_page: int) -> tuple[int, bytes | None]:
        return 1, None


async def test_postgres_down_on_the_fast_path_is_a_503_naming_it() -> None:
    runtime: Any = Runtime(
        pool=DownPool(), redis=None, cache=EmptyCache(), changelog=None, flights=None, options=ItemsOptions()
    )
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/items/list",
        "query_string": b"limit=5",
        "headers": [],
        "state": {"items": runtime},
    }
    labels = {"service": "items-test", "route": "/items/list", "status": "503"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    sent = await asgi_call(ItemsFastPath(never_called, service="items-test"), scope)
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert body["error"] == "dependency_unavailable"
    assert body["dependency"] == "postgres"
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1
