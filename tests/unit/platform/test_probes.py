"""The probe server of background processes: what /healthz, /readyz and /metrics promise, whatever a dependency does."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from orderly.platform.metrics import BatchTimer
from orderly.platform.probes import ProbePortError, Probes, serve_probes
from orderly.platform.settings import ProbeSettings
from tests.plumbing import free_port


def probes(registry: CollectorRegistry | None = None) -> Probes:
    return Probes(service="test-worker", instance=f"t-{free_port()}", registry=registry or CollectorRegistry())


@asynccontextmanager
async def served(p: Probes, *, client_timeout_s: float = 5) -> AsyncIterator[httpx.AsyncClient]:
    """The probes served on a free loopback port, and a client that asks that port."""
    settings = ProbeSettings(port=free_port())
    base_url = f"http://127.0.0.1:{settings.port}"
    async with serve_probes(settings, p), httpx.AsyncClient(base_url=base_url, timeout=client_timeout_s) as http:
        yield http


async def test_healthz_names_the_role_and_a_standby_is_ready_and_says_so() -> None:
    p = probes()
    p.check("db", _true)
    async with served(p) as http:
        assert (await http.get("/healthz")).json()["role"] == "starting"
        p.set_role("standby")
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "service": "test-worker", "instance": p.instance, "role": "standby"}
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "role": "standby", "checks": {"db": True}}


async def test_readyz_is_503_naming_the_dependency_that_fails_hangs_or_raises() -> None:
    p = probes()
    p.check("db", _true)
    p.check("broker", _false)
    p.check("hangs", _hang)
    p.check("raises", _raise)
    async with served(p) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"db": True, "broker": False, "hangs": False, "raises": False}


async def test_metrics_refreshes_gauges_before_rendering_and_survives_a_failing_refresher() -> None:
    registry = CollectorRegistry()
    depth = Gauge("t_depth", "test gauge", registry=registry)
    p = probes(registry)
    reads = 0

    async def refresh() -> None:
        nonlocal reads
        reads += 1
        depth.set(reads * 10)

    p.on_scrape("depth", refresh)
    p.on_scrape("broken", _raise_none)
    p.on_scrape("slow", _hang_none)
    async with served(p, client_timeout_s=10) as http:
        first = await http.get("/metrics")
        second = await http.get("/metrics")
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"].startswith("text/plain")
    assert "t_depth 10.0" in first.text
    assert "t_depth 20.0" in second.text


async def test_a_timed_refresher_runs_without_a_scrape_so_healthz_shows_a_fresh_role() -> None:
    p = probes()
    p.every(0.05, "role", _become_active(p))
    async with served(p) as http:
        for _ in range(100):
            if (await http.get("/healthz")).json()["role"] == "active":
                break
            await asyncio.sleep(0.02)
    assert p.role == "active"
    assert REGISTRY.get_sample_value("orderly_active", {"service": "test-worker", "instance": p.instance}) == 1


async def test_unknown_paths_are_404_and_other_methods_405() -> None:
    async with served(probes()) as http:
        missing = await http.get("/nope")
        post = await http.post("/healthz")
    assert missing.status_code == 404
    assert "/healthz" in missing.json()["message"]
    assert post.status_code == 405


async def test_a_taken_probe_port_stops_the_process_with_a_message_naming_the_flag() -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    try:
        settings = ProbeSettings(port=squatter.getsockname()[1])
        with pytest.raises(ProbePortError, match="--health-port"):
            async with serve_probes(settings, probes()):
                pass
    finally:
        squatter.close()


async def test_port_zero_serves_nothing() -> None:
    async with serve_probes(ProbeSettings(port=0), probes()) as server:
        assert server is None


def test_a_batch_is_observed_once_it_succeeds_and_not_when_it_raises() -> None:
    timer = BatchTimer("test-batcher")
    with timer.batch(7):
        pass
    with pytest.raises(RuntimeError), timer.batch(100):
        raise RuntimeError("the commit failed")
    labels = {"service": "test-batcher"}
    assert REGISTRY.get_sample_value("orderly_batch_size_sum", labels) == 7
    assert REGISTRY.get_sample_value("orderly_batch_size_count", labels) == 1
    assert REGISTRY.get_sample_value("orderly_batch_seconds_count", labels) == 1


async def _true() -> bool:
    return True


async def _false() -> bool:
    return False


async def _hang() -> bool:
    await asyncio.sleep(60)
    return True


async def _raise() -> bool:
    raise ConnectionRefusedError("down")


async def _raise_none() -> None:
    raise ConnectionRefusedError("down")


async def _hang_none() -> None:
    await asyncio.sleep(60)


def _become_active(p: Probes) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        p.set_role("active")

    return refresh
