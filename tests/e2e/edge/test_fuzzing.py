"""Fuzzing at the edge: schemathesis drives every service's HTTP API from its own OpenAPI schema.

Each service runs as a real process against this run's namespaces. For a bounded number of generated requests per
operation (valid and invalid ones), no answer may be a 5xx or carry a traceback, and every 4xx body must name the
problem in a JSON message.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.plumbing import Namespace, Processes, free_port, infra_env

SERVICES = {"ingest": ("ingest", "api"), "sums": ("sums", "api"), "items": ("items", "api"), "loms": ("loms", "api")}
EXAMPLES_PER_OPERATION = 25


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def apis(namespace: Namespace) -> AsyncIterator[dict[str, str]]:
    """Every service's API running against fresh namespaces; name -> base URL."""
    env = infra_env(await namespace.settings("fuzz"))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orderly", "init"],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    running = Processes()
    urls = {}
    try:
        for name, args in SERVICES.items():
            port = free_port()
            process = running.start(*args, "--port", str(port), env=env)
            process.wait_http_ready(port)
            urls[name] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        running.stop_all()


def names_the_problem(body: str) -> bool:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return False
    if not isinstance(data, dict):
        return False
    message = data.get("message") or data.get("error") or data.get("detail")
    return bool(message)


def assert_edge_contract(case: Any, response: Any) -> None:
    where = f"{case.method} {case.formatted_path} {case.query or ''}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:300]}"
    assert "Traceback" not in response.text, where
    if 400 <= response.status_code < 500:
        assert names_the_problem(response.text), f"{where} -> {response.status_code} without a message: {response.text}"


def fuzz(operation: Any, base_url: str) -> tuple[int, list[str]]:
    """Run generated cases against one operation; returns how many ran and the contract breaches found."""
    calls = 0

    @settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(operation.as_strategy())
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        assert_edge_contract(case, case.call(base_url=base_url, timeout=10))

    try:
        run()
    except AssertionError as failure:
        return calls, [str(failure)]
    return calls, []


@pytest.mark.parametrize("service", list(SERVICES))
def test_no_generated_request_gets_a_5xx_and_every_4xx_names_the_problem(apis: dict[str, str], service: str) -> None:
    schema = schemathesis.openapi.from_url(f"{apis[service]}/openapi.json")
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        calls[operation.label], found = fuzz(operation, apis[service])
        failures += found
    assert not failures, "\n".join(failures)
    assert calls, f"{service}: the schema lists no operations"
    # Operations without parameters have one possible request; the others must have been exercised many times.
    assert all(count >= 1 for count in calls.values()), calls
    assert max(calls.values()) >= EXAMPLES_PER_OPERATION // 2, calls
