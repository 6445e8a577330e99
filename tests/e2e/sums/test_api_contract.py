"""The HTTP contract, seen by a client of three instances: sums, replays, 409, 422, and bad input."""

from __future__ import annotations

import secrets

import pytest
import redis.asyncio as aioredis

from orderly.sums.domain import InProgressMark, SumRequest
from tests.e2e.sums.conftest import Cluster, Http


def new_key() -> str:
    return "t-" + secrets.token_hex(8)


async def test_a_number_is_added_and_the_new_sum_returned_on_both_paths_and_methods(
    cluster: Cluster, client: Http
) -> None:
    before = await cluster.total(client)
    first = await client.get(f"{cluster.url(0)}/sum", params={"number": 3})
    second = await client.post(f"{cluster.url(1)}/test-sum-action", params={"number": 4})
    assert first.json() == {"sum": before + 3}
    assert second.json() == {"sum": before + 7}
    assert await cluster.total(client) == before + 7


async def test_a_repeat_on_any_instance_replays_the_identical_body(cluster: Cluster, client: Http) -> None:
    key = new_key()
    before = await cluster.total(client)
    first = await client.get(f"{cluster.url(0)}/sum", params={"number": 10, "ikey": key})
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    for i in range(1, 4):
        again = await client.post(f"{cluster.url(i)}/sum", params={"number": 10}, headers={"Idempotency-Key": key})
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers["Idempotent-Replayed"] == "true"
    assert await cluster.total(client) == before + 10


async def test_key_reuse_with_another_number_is_422_and_adds_nothing(cluster: Cluster, client: Http) -> None:
    key = new_key()
    await client.get(f"{cluster.url(0)}/sum", params={"number": 5, "ikey": key})
    before = await cluster.total(client)
    reused = await client.get(f"{cluster.url(1)}/sum", params={"number": 6, "ikey": key})
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"
    assert await cluster.total(client) == before


async def test_a_repeat_while_the_first_is_in_progress_is_409_with_retry_after(cluster: Cluster, client: Http) -> None:
    key = new_key()
    mark = InProgressMark(owner="elsewhere", fingerprint=SumRequest(5, key).fingerprint)
    redis = aioredis.Redis.from_url(cluster.settings.redis.url())
    try:
        await redis.set(f"{cluster.settings.redis.key_prefix}sums:ikey:{key}", mark.encode(), px=4_000)
        before = await cluster.total(client)
        busy = await client.get(f"{cluster.url(2)}/sum", params={"number": 5, "ikey": key})
    finally:
        await redis.aclose()
    assert busy.status_code == 409
    assert 1 <= int(busy.headers["Retry-After"]) <= 4
    assert await cluster.total(client) == before


BAD_INPUTS = [
    pytest.param({"number": "0"}, "number", id="zero"),
    pytest.param({"number": "-1"}, "number", id="negative"),
    pytest.param({"number": "1.5"}, "number", id="fraction"),
    pytest.param({"number": "abc"}, "number", id="text"),
    pytest.param({"number": str(10**30)}, "number", id="10^30"),
    pytest.param({"number": "1", "ikey": ""}, "ikey", id="empty-key"),
    pytest.param({"number": "1", "ikey": "k" * 10_240}, "ikey", id="10kb-key"),
    pytest.param({"number": "1", "ikey": "k" * 256}, "ikey", id="256-char-key"),
]


@pytest.mark.parametrize(("params", "field"), BAD_INPUTS)
async def test_bad_input_is_400_naming_the_field_and_the_sum_is_unchanged(
    cluster: Cluster, client: Http, params: dict[str, str], field: str
) -> None:
    before = await cluster.total(client)
    response = await client.get(f"{cluster.url(0)}/sum", params=params)
    assert response.status_code == 400
    assert field in [f["field"] for f in response.json()["fields"]]
    assert await cluster.total(client) == before


@pytest.mark.parametrize("key", ["", "k" * 10_240], ids=["empty", "10kb"])
async def test_a_bad_idempotency_key_header_is_4xx_and_the_sum_is_unchanged(
    cluster: Cluster, client: Http, key: str
) -> None:
    before = await cluster.total(client)
    response = await client.post(f"{cluster.url(1)}/sum", params={"number": 1}, headers={"Idempotency-Key": key})
    assert 400 <= response.status_code < 500
    assert await cluster.total(client) == before


async def test_every_redis_key_the_service_writes_has_a_ttl(cluster: Cluster, client: Http) -> None:
    for i in range(6):
        await client.get(f"{cluster.url(i)}/sum", params={"number": 1, "ikey": new_key()})
    redis = aioredis.Redis.from_url(cluster.settings.redis.url())
    try:
        names = [k async for k in redis.scan_iter(match=f"{cluster.settings.redis.key_prefix}*", count=1000)]
        ttls = [await redis.pttl(k) for k in names]
    finally:
        await redis.aclose()
    assert len(names) >= 6
    assert all(t > 0 for t in ttls)
