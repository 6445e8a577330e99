"""The HTTP factory: platform endpoints exist, validation errors are 400s naming each field, no traceback leaks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from fastapi import APIRouter, FastAPI, Query, Request
from prometheus_client import REGISTRY

from orderly.platform.errors import OutcomeUnknownError
from orderly.platform.http import create_app


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
    yield {}


router = APIRouter()


@router.get("/echo")
async def echo(n: list[int] = Query(...)) -> dict[str, list[int]]:  # noqa: B008 - FastAPI's declaration style
    return {"n": n}


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret internals")


async def never_ready(_request: Request) -> bool:
    return False


def client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_platform_endpoints_answer() -> None:
    app = create_app(service="t", lifespan=lifespan, routers=[router], readiness={"db": never_ready})
    async with client(app) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "checks": {"db": False}}
        await http.get("/echo?n=1")
        metrics = (await http.get("/metrics")).text
        assert 'http_requests_total{route="/echo",service="t",status="200"}' in metrics


async def test_validation_errors_are_400_and_name_the_field() -> None:
    app = create_app(service="t", lifespan=lifespan, routers=[router])
    async with client(app) as http:
        response = await http.get("/echo?n=1&n=x")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["fields"][0]["field"] == "n[1]"
    assert "n[1]" in body["message"]


async def test_an_unhandled_error_is_a_500_without_internals() -> None:
    app = create_app(service="t", lifespan=lifespan, routers=[router])
    async with client(app) as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"] == "internal_error"


@router.get("/pg-down")
async def pg_down() -> None:
    raise asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")


@router.get("/commit-cut")
async def commit_cut() -> None:
    raise OutcomeUnknownError("postgres")


async def test_an_outage_is_a_503_naming_the_dependency_with_retry_after_and_counted_as_503() -> None:
    app = create_app(service="t-outage", lifespan=lifespan, routers=[router])
    labels = {"service": "t-outage", "route": "/pg-down", "status": "503"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    async with client(app) as http:
        response = await http.get("/pg-down")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "error": "dependency_unavailable",
        "message": "postgres is unavailable; retry later",
        "fields": [],
        "dependency": "postgres",
    }
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1


async def test_a_commit_cut_off_is_a_503_that_says_the_outcome_is_unknown() -> None:
    app = create_app(service="t", lifespan=lifespan, routers=[router])
    async with client(app) as http:
        response = await http.get("/commit-cut")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == "outcome_unknown"
    assert response.json()["dependency"] == "postgres"


async def test_a_bug_is_still_a_500() -> None:
    app = create_app(service="t", lifespan=lifespan, routers=[router])
    async with client(app) as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"


async def test_readyz_says_when_to_try_again() -> None:
    app = create_app(service="t", lifespan=lifespan, routers=[router], readiness={"db": never_ready})
    async with client(app) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "1"
