"""A hello-world JSON endpoint on the same stack as the services (platform create_app, FastAPI, granian, uvloop).

`python -m bench.hello_app --port N` serves it; the benchmark uses it as the ceiling of the HTTP stack.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from orderly.platform.http import create_app as create_platform_app
from orderly.platform.http import serve
from orderly.platform.settings import HttpSettings

router = APIRouter()


@router.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@asynccontextmanager
async def _nothing(_app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
    yield {}


def create_app() -> FastAPI:
    return create_platform_app(service="hello", lifespan=_nothing, routers=[router])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve("bench.hello_app:create_app", HttpSettings(port=args.port), process_name="orderly-bench-hello")
