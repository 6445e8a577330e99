"""Races across three instances: one key hammered at once, and a large mixed workload with an exact final sum."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import defaultdict

from tests.e2e.sums.conftest import Cluster, Http, Reply


async def test_200_concurrent_requests_with_one_key_over_3_instances_apply_it_exactly_once(
    cluster: Cluster, client: Http
) -> None:
    key = "race-" + secrets.token_hex(8)
    before = await cluster.total(client)
    start = asyncio.Event()

    async def fire(i: int) -> Reply:
        await start.wait()
        return await client.post(f"{cluster.url(i)}/sum", params={"number": 7}, headers={"Idempotency-Key": key})

    tasks = [asyncio.create_task(fire(i)) for i in range(200)]
    start.set()
    answers = await asyncio.gather(*tasks)

    statuses = {r.status_code for r in answers}
    ok = [r for r in answers if r.status_code == 200]
    assert statuses <= {200, 409}, statuses
    assert {r.content for r in ok} == {b'{"sum":%d}' % (before + 7)}
    assert sum("Idempotent-Replayed" not in r.headers for r in ok) == 1
    assert all(r.headers.get("Retry-After") for r in answers if r.status_code == 409)
    assert await cluster.total(client) == before + 7


async def test_10000_mixed_requests_leave_the_exact_expected_sum(cluster: Cluster, client: Http) -> None:
    rng = random.Random(4)
    run = secrets.token_hex(4)
    keyed = {f"mix-{run}-{i}": rng.choice([1, rng.randint(1, 10**6), 10**18]) for i in range(6_000)}
    requests: list[tuple[int, str | None]] = [(n, k) for k, n in keyed.items()]
    repeats = rng.choices(list(keyed), k=2_000)
    requests += [(keyed[k], k) for k in repeats]
    unkeyed = [rng.randint(1, 10**9) for _ in range(2_000)]
    requests += [(n, None) for n in unkeyed]
    rng.shuffle(requests)
    # Put a few repeats right next to their first use so some run concurrently with it.
    requests[:0] = [(keyed[k], k) for k in list(keyed)[:50] for _ in range(2)]
    requests = requests[:10_000]
    assert len(requests) == 10_000

    before = await cluster.total(client)
    limit = asyncio.Semaphore(64)
    bodies: dict[str, set[bytes]] = defaultdict(set)
    applied_sums: list[int] = []
    failures: list[tuple[int, str]] = []

    async def send(i: int, number: int, key: str | None) -> None:
        params: dict[str, str | int] = {"number": number}
        if key is not None:
            params["ikey"] = key
        async with limit:
            response = await client.get(f"{cluster.url(i)}/sum", params=params)
        if response.status_code == 409:
            return
        if response.status_code != 200:
            failures.append((response.status_code, response.text))
            return
        if key is not None:
            bodies[key].add(response.content)
        if "Idempotent-Replayed" not in response.headers:
            applied_sums.append(int(response.json()["sum"]))

    await asyncio.gather(*(send(i, n, k) for i, (n, k) in enumerate(requests)))

    sent_keys = {k for _, k in requests if k is not None}
    expected = before + sum(keyed[k] for k in sent_keys) + sum(n for n, k in requests if k is None)
    assert failures == []
    assert await cluster.total(client) == expected
    assert set(bodies) == sent_keys, "every key got at least one 200"
    assert all(len(b) == 1 for b in bodies.values()), "a key's answers are identical"
    assert len(applied_sums) == len(set(applied_sums)) == len(sent_keys) + sum(k is None for _, k in requests)
    assert max(applied_sums) == expected
