"""Paired A/B of the HTTP hot paths: both revisions' servers up side by side, loaded in pairs of short wrk bursts.

    python -m bench.ab_paired --base <rev> [--head <rev>] [--pairs N] [--seconds S] [--alternate] [--targets T,...]

`make bench-ab` runs the whole bench of one revision, then of the other. On this machine the figures of one and the
same revision drift by ±30 % and more within minutes (its neighbours' load), far more than the 5 % a change may cost,
so two such runs minutes apart cannot tell a 5 % change. Here both revisions serve at the same time, and a figure is
the median over the pairs of B / A. By default the two bursts of a pair run at the same time (a wrk per server): every
instant's noise hits both sides alike, and what each serves measures its CPU cost per request against the other's.
With ``--alternate`` they run in turn (A, B, then B, A; the idle server costs next to nothing): drift slower than a
few seconds falls out of each ratio, faster drift does not.

Targets, each served from its revision's worktree (as `bench.ab` makes them, with B's harness):
- ``hello``: the hello-world app on the platform's HTTP stack (``create_app``, the Edge, FastAPI, granian);
- ``ingest`` (``ingest`` and ``ingest-2``): ``GET /ingest`` of the ingest API with one process, then with two,
  publishing to RabbitMQ with confirms;
- ``ingest-drain`` (``ingest-drain`` and ``ingest-drain-1``): the ingest worker (``--burst``) draining a backlog of
  20,000 requests with batch 500, then of 2,000 with batch 1, each side on a database and vhost of its own; in turn
  (A, B, then B, A), as ``loms-relay``; at most 10 pairs each;
- ``items`` (``items-cached`` and ``items-writes``): the items API's cached ``GET /items/list`` and the bench's write
  mix (one in five a create, the rest updates), both APIs on one database and cache, no relay or audit running;
- ``items-uncached``: the bench's random pages of ``GET /items/list`` (mostly misses), each side's API on a
  database and cache of its own, so that one side's misses never fill the other's cache, and both caches emptied
  before every pair;
- ``items-mix`` (``items-mix`` and ``items-mix-probe``): the bench's 90/10 list/update mix, each side with its own
  API, relay and audit on a database, stream and ClickHouse table of its own; then the same with the bench's
  change-log lag probe running against each side during every burst;
- ``sums`` (``sums`` and ``sums-reference``): ``GET /sum`` of one sums instance per side (batched, then the
  reference mode, one transaction per request), each on its own MySQL database and Redis prefix, with
  the bench's load (90 % new keys, 10 % repeats of a recent one; a 409 for a repeat still in flight is an answer);
- ``loms``: ``POST /order/create`` of one loms API process per side, each on its own PostgreSQL database (stock
  reserved and the outbox event written in one transaction; no relay runs). Its rate is set by PostgreSQL's row
  locks and WAL flushes, which both sides share (a pair's B / A of orders per second ranged 0.38 to 2.19), so it
  compares orders per CPU-second of each side's API process instead;
- ``loms-relay``: the loms relay (``--burst``) draining a 200,000-event outbox into Kafka, each side on its own
  database and topics; always in turn (A, B, then B, A), since a drain lasts a second or two; at most 10 pairs.

Results: bench/results/ab_paired.json and ab_paired.md (rendered into docs/benchmarks.md by ``bench/render.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import ingest as ingest_bench
from bench import items as items_bench
from bench import loms as loms_bench
from bench import sums as sums_bench
from bench.ab import RESULTS, TOLERANCE, checkout, revisions_parser, share_harness
from bench.databases import drop_postgres_database
from bench.ingest import wait_ready, wrk
from bench.mix_cpu import cpu_seconds
from orderly.loms.kafka_admin import init_topics
from orderly.loms.schema import migrate as loms_migrate
from orderly.loms.settings import LomsSettings
from orderly.platform.settings import InfraSettings

PORTS = {"A": 18191, "B": 18192}


@contextmanager
def running(
    tree: Path, args: list[str], env: dict[str, str], port: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m <args>`` from ``tree``'s own environment (ready once ``port`` answers, if given) until the block
    ends."""
    proc = subprocess.Popen(
        [str(tree / ".venv" / "bin" / "python"), "-m", *args],
        cwd=tree,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if port is not None:
            wait_ready(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def paired(
    urls: dict[str, str],
    *,
    pairs: int,
    seconds: int,
    script: str | None = None,
    together: bool = False,
    alongside: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    accept_non_2xx: Callable[[str], bool] | None = None,
    per_cpu_of: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``pairs`` bursts of each side; B / A per pair.

    Alternating (the default): A and B back to back, the order swapped every pair. ``together``: both sides loaded
    at the same time by a wrk each (one thread each), the starting order swapped every pair. Then both share every
    instant's noise, and each server's rate is what its CPU cost per request buys out of an even share of the
    machine. ``alongside`` is entered around each pair's bursts (the items mix's lag probes, the sums keys' tag).
    A burst with non-2xx answers fails the run unless ``accept_non_2xx`` finds them expected in wrk's output.

    ``per_cpu_of`` (a process per side) compares requests per CPU-second of that process and its children instead of
    requests per second: for a path whose rate is set by something both sides share (loms: PostgreSQL's row locks
    and WAL flushes), not by its own CPU.
    """
    rates: dict[str, list[float]] = {"A": [], "B": []}
    per_cpu: dict[str, list[float]] = {"A": [], "B": []}
    for index in range(pairs):
        order = ("A", "B") if index % 2 == 0 else ("B", "A")
        cpu_before = {side: cpu_seconds(pid) for side, pid in (per_cpu_of or {}).items()}
        with alongside():
            if together:
                with ThreadPoolExecutor(max_workers=2) as pool:
                    futures = {
                        side: pool.submit(wrk, urls[side], seconds=seconds, connections=50, threads=1, script=script)
                        for side in order
                    }
                results = {side: future.result() for side, future in futures.items()}
            else:
                results = {side: wrk(urls[side], seconds=seconds, connections=50, script=script) for side in order}
        for side, result in results.items():
            if result["non_2xx"] and not (accept_non_2xx and accept_non_2xx(result["raw"])):
                raise RuntimeError(f"{side}: {result['non_2xx']} non-2xx answers from {urls[side]}")
            rates[side].append(result["req_per_s"])
            if per_cpu_of:
                per_cpu[side].append(result["requests"] / (cpu_seconds(per_cpu_of[side]) - cpu_before[side]))
    compared = per_cpu if per_cpu_of else rates
    return {
        "A_req_per_s": rates["A"],
        "B_req_per_s": rates["B"],
        **({"A_req_per_cpu_s": per_cpu["A"], "B_req_per_cpu_s": per_cpu["B"]} if per_cpu_of else {}),
        **pair_ratios(compared),
    }


def pair_ratios(figures: dict[str, list[float]]) -> dict[str, Any]:
    """B / A of each pair, and their median (the figure of record)."""
    ratios = [b / a for a, b in zip(figures["A"], figures["B"], strict=True)]
    return {"ratios": [round(r, 4) for r in ratios], "median_ratio": statistics.median(ratios)}


def in_turn(pairs: int, drain: Callable[[str], float]) -> dict[str, Any]:
    """At most 10 pairs of ``drain(side)`` (a rate), in turn: A then B, then B then A; B / A per pair."""
    rates: dict[str, list[float]] = {"A": [], "B": []}
    for index in range(min(pairs, 10)):
        for side in ("A", "B") if index % 2 == 0 else ("B", "A"):
            rates[side].append(drain(side))
    return {"A_req_per_s": rates["A"], "B_req_per_s": rates["B"], **pair_ratios(rates)}


def migrate_each(trees: dict[str, Path], service: str, envs: dict[str, dict[str, str]]) -> None:
    """``orderly <service> migrate`` of each side's own revision, with that side's environment."""
    for side, env in envs.items():
        python = str(trees[side] / ".venv" / "bin" / "python")
        subprocess.run(
            [python, "-m", "orderly", service, "migrate"],
            cwd=trees[side],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )


def both(trees: dict[str, Path], args: list[str], env: dict[str, str]) -> contextlib.ExitStack:
    """A's and B's server of ``args`` (``{port}`` filled in per side), both ready."""
    with contextlib.ExitStack() as stack:  # A's server is stopped again if B's does not come up
        for side, port in PORTS.items():
            stack.enter_context(running(trees[side], [a.format(port=port) for a in args], env, port))
        return stack.pop_all()


def urls(path: str, ports: dict[str, int] = PORTS) -> dict[str, str]:
    return {side: f"http://127.0.0.1:{port}{path}" for side, port in ports.items()}


def measure_hello(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, Any]:
    with both(trees, ["bench.hello_app", "--port", "{port}"], {}):
        return {"hello": paired(urls("/hello"), pairs=pairs, seconds=seconds, together=together)}


def measure_ingest(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, Any]:
    """``GET /ingest`` with one API process per side, then with two."""
    infra = InfraSettings()
    settings = asyncio.run(ingest_bench.prepare(infra))
    results: dict[str, Any] = {}
    try:
        for workers, target in ((1, "ingest"), (2, "ingest-2")):
            args = ["orderly", "ingest", "api", "--port", "{port}", "--workers", str(workers)]
            with both(trees, args, ingest_bench.env_for(settings)):
                url = urls("/ingest?n=7&n=-3&n=42")
                results[target] = paired(url, pairs=pairs, seconds=seconds, together=together)
        return results
    finally:
        asyncio.run(ingest_bench.cleanup(infra))


DRAINS = ((500, 20_000, "ingest-drain"), (1, 2_000, "ingest-drain-1"))
"""(batch size, backlog, target) of the ingest drain pairs: the bench's two drains, on smaller backlogs."""


def ingest_drain(tree: Path, settings: InfraSettings, *, batch_size: int, count: int) -> float:
    """Requests per second of `bench.ingest`'s drain, run by ``tree``'s worker; every request must be stored."""
    drained = asyncio.run(ingest_bench.drain(settings, batch_size=batch_size, count=count, tree=tree))
    if drained["stored"] != count:
        raise RuntimeError(f"the worker of {tree.name} stored {drained['stored']} of {count}")
    return float(drained["drain_req_per_s"])


async def pg_execute(settings: InfraSettings, sql: str) -> None:
    conn = await asyncpg.connect(settings.postgres.dsn())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def measure_ingest_drain(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, Any]:
    """The ingest worker draining a backlog, batched (500) and one at a time, each side on a database and vhost of
    its own, migrated by its own revision; in turn (A, B, then B, A), as the loms relay; at most 10 pairs each."""
    del seconds, together  # a drain takes as long as it takes; always in turn
    infra = InfraSettings()
    run = secrets.token_hex(3)
    tags = {side: f"bench_drain_{side.lower()}_{run}" for side in ("A", "B")}
    results: dict[str, Any] = {}
    try:
        settings = {side: asyncio.run(ingest_bench.prepare(infra, tag, migrate=False)) for side, tag in tags.items()}
        migrate_each(trees, "ingest", {side: ingest_bench.env_for(one) for side, one in settings.items()})
        # One unmeasured drain per side, then ANALYZE: both databases start the pairs with rows and statistics. On
        # fresh tables the first drains' speed depends on when autoanalyze happens to run (a first drain of 5,000 at
        # batch 1 went at 496 and 552 req/s on one side and 791 and 977 on the other, and at ~1,000 on both after).
        for side, one in settings.items():
            ingest_drain(trees[side], one, batch_size=DRAINS[0][0], count=DRAINS[0][1])
            asyncio.run(pg_execute(one, "ANALYZE"))
        for batch_size, count, target in DRAINS:
            drain = functools.partial(ingest_drain, batch_size=batch_size, count=count)
            results[target] = in_turn(pairs, lambda side, drain=drain: drain(trees[side], settings[side]))
        return results
    finally:
        for tag in tags.values():
            asyncio.run(ingest_bench.cleanup(infra, tag))


def measure_items(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, dict[str, Any]]:
    """Both APIs on one database and one cache (the schema is the same); no relay or audit runs meanwhile."""
    settings = items_bench.bench_settings(secrets.token_hex(3))
    asyncio.run(items_bench.migrate(settings))
    try:
        with both(trees, ["orderly", "items", "api", "--port", "{port}"], items_bench.env_for(settings)):
            asyncio.run(items_bench.seed(urls("")["B"]))
            for url in urls("/items/list").values():
                httpx.get(url).raise_for_status()  # warm each side's cache entry
            with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
                script.write(items_bench.WRITE_LUA)
                script.flush()
                return {
                    "items-cached": paired(urls("/items/list"), pairs=pairs, seconds=seconds, together=together),
                    "items-writes": paired(
                        urls("/"), pairs=pairs, seconds=seconds, script=script.name, together=together
                    ),
                }
    finally:
        asyncio.run(items_bench.drop(settings))


MIX_PORTS = {"A": 18193, "B": 18194}


def own_items_apis(
    trees: dict[str, Path], settings: dict[str, Any], stack: contextlib.ExitStack, *also: list[str]
) -> list[str]:
    """Each side's items API (and ``also``, e.g. the relay) on its own ``settings``, migrated, kept running by
    ``stack``; the APIs' base URLs."""
    for side, port in MIX_PORTS.items():
        asyncio.run(items_bench.migrate(settings[side]))
        env = items_bench.env_for(settings[side])
        stack.enter_context(running(trees[side], ["orderly", "items", "api", "--port", str(port)], env, port))
        for command in also:
            stack.enter_context(running(trees[side], ["orderly", "items", *command], env))
    return [f"http://127.0.0.1:{port}" for port in MIX_PORTS.values()]


@contextmanager
def cold_caches(settings: dict[str, Any]) -> Iterator[None]:
    """Each side's cache emptied before a pair: both start every pair cold. Left to fill, the two caches drifted
    apart (the hit ratio of each depends on its own history of random pages), and a pair's B / A ranged 0.42 to
    1.94 over 80 pairs."""
    for one in settings.values():
        items_bench.clear_cache(one)
    yield


def measure_items_uncached(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, Any]:
    """The bench's random pages (mostly cache misses), each side's API on a database and cache of its own, so that
    neither side's misses fill the other's cache; no relay or audit runs."""
    settings = {side: items_bench.bench_settings(secrets.token_hex(3)) for side in MIX_PORTS}
    try:
        with contextlib.ExitStack() as stack:
            for base in own_items_apis(trees, settings, stack):
                asyncio.run(items_bench.seed(base))
            with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
                script.write(items_bench.UNCACHED_LUA)
                script.flush()
                lists = urls("/", MIX_PORTS)
                how = {"pairs": pairs, "seconds": seconds, "together": together}
                cold = paired(lists, script=script.name, alongside=lambda: cold_caches(settings), **how)  # type: ignore[arg-type]
                return {"items-uncached": cold}
    finally:
        for one in settings.values():
            asyncio.run(items_bench.drop(one))


@contextmanager
def lag_probes(bases: list[str]) -> Iterator[None]:
    """The bench's change-log lag probe (a write, then `/logs` polled until it shows) against each base meanwhile."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def probe_all() -> None:
        await asyncio.gather(*(items_bench.lag_probe(base, stop) for base in bases))

    with ThreadPoolExecutor(max_workers=1) as pool:
        done = pool.submit(loop.run_until_complete, probe_all())
        try:
            yield
        finally:
            loop.call_soon_threadsafe(stop.set)
            done.result()
            loop.close()


def measure_items_mix(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, dict[str, Any]]:
    """The 90/10 list/update mix, each side a whole pipeline of its own: API, relay and audit on its own database,
    cache prefix, stream and ClickHouse table. Measured without, then with, the lag probe on each side."""
    settings = {side: items_bench.bench_settings(secrets.token_hex(3)) for side in MIX_PORTS}
    try:
        with contextlib.ExitStack() as stack:
            bases = own_items_apis(trees, settings, stack, ["relay"], ["audit"])
            for base in bases:
                asyncio.run(items_bench.seed(base))
            with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
                script.write(items_bench.MIX_LUA)
                script.flush()
                mix = urls("/", MIX_PORTS)
                return {
                    "items-mix": paired(mix, pairs=pairs, seconds=seconds, script=script.name, together=together),
                    "items-mix-probe": paired(
                        mix,
                        pairs=pairs,
                        seconds=seconds,
                        script=script.name,
                        together=together,
                        alongside=lambda: lag_probes(bases),
                    ),
                }
    finally:
        for one in settings.values():
            asyncio.run(items_bench.drop(one))


SUMS_PORTS = {"A": 18195, "B": 18196}


@contextmanager
def fresh_sums_keys() -> Iterator[None]:
    """A key namespace of its own for a pair's bursts (sums_wrk.lua reads ``SUMS_TAG``): every pair sends new keys."""
    os.environ["SUMS_TAG"] = f"p{secrets.token_hex(4)}"
    yield


def sums_busy_only(raw: str) -> bool:
    """sums_wrk.lua's summary: the only non-2xx answers were 409 (a repeat of a key still in flight), no errors."""
    found = re.search(r"RESULT (\{.*\})", raw)
    if found is None:
        return False
    summary = json.loads(found[1])
    return bool(summary["other"] == 0 and summary["socket_errors"] == 0)


def measure_sums(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, dict[str, Any]]:
    """``GET /sum`` of one batched sums instance per side, each on a MySQL database and Redis prefix of its own,
    migrated by its own revision; the bench's load (90 % new keys, 10 % repeats of recent ones)."""
    envs = {
        side: {
            "ORDERLY_MYSQL__DATABASE": f"bench_sums_ab_{side.lower()}_{secrets.token_hex(3)}",
            "ORDERLY_REDIS__KEY_PREFIX": f"bench:ab{side}{secrets.token_hex(3)}:",
            "ORDERLY_LOG__LEVEL": "WARNING",
        }
        for side in SUMS_PORTS
    }
    os.environ["SUMS_REQUESTS"] = str(10**9)  # the burst's duration ends it, not a count
    try:
        migrate_each(trees, "sums", envs)
        results: dict[str, dict[str, Any]] = {}
        for mode, target in (("batched", "sums"), ("reference", "sums-reference")):
            with contextlib.ExitStack() as stack:
                for side, port in SUMS_PORTS.items():
                    args = ["orderly", "sums", "api", "--port", str(port), "--mode", mode]
                    stack.enter_context(running(trees[side], args, envs[side], port))
                script = str(Path(sums_bench.__file__).parent / "sums_wrk.lua")
                results[target] = paired(
                    urls("", SUMS_PORTS),
                    pairs=pairs,
                    seconds=seconds,
                    script=script,
                    together=together,
                    alongside=fresh_sums_keys,
                    accept_non_2xx=sums_busy_only,
                )
        return results
    finally:
        for env in envs.values():
            settings = InfraSettings()
            settings = settings.model_copy(
                update={
                    "mysql": settings.mysql.model_copy(update={"database": env["ORDERLY_MYSQL__DATABASE"]}),
                    "redis": settings.redis.model_copy(update={"key_prefix": env["ORDERLY_REDIS__KEY_PREFIX"]}),
                }
            )
            asyncio.run(sums_bench.drop_database(settings))


LOMS_PORTS = {"A": 18197, "B": 18198}


def measure_loms(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, dict[str, Any]]:
    """``POST /order/create`` (a reservation and an outbox event in one transaction) of one loms API process per
    side, each on a PostgreSQL database of its own, migrated and stocked by its own revision; no relay runs."""
    databases = {side: f"bench_loms_ab_{side.lower()}_{secrets.token_hex(3)}" for side in LOMS_PORTS}
    envs = {side: {"ORDERLY_POSTGRES__DATABASE": db, "ORDERLY_LOG__LEVEL": "WARNING"} for side, db in databases.items()}
    try:
        migrate_each(trees, "loms", envs)
        with contextlib.ExitStack() as stack:
            pids = {}
            for side, port in LOMS_PORTS.items():
                args = ["orderly", "loms", "api", "--port", str(port), "--workers", "1"]
                pids[side] = stack.enter_context(running(trees[side], args, envs[side], port)).pid
            with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
                script.write(loms_bench.CREATE_SCRIPT)
                script.flush()
                create = urls("/order/create", LOMS_PORTS)
                how = {"pairs": pairs, "seconds": seconds, "together": together}
                return {"loms": paired(create, script=script.name, per_cpu_of=pids, **how)}  # type: ignore[arg-type]
    finally:
        postgres = InfraSettings().postgres
        for database in databases.values():
            asyncio.run(drop_postgres_database(postgres, database))


RELAY_EVENTS = 200_000


def relay_drain(tree: Path, settings: LomsSettings) -> float:
    """Events per second of one ``orderly loms relay --burst`` from ``tree`` draining a fresh outbox backlog (its own
    figure: first claim to last delete, as `bench.loms` reads it)."""

    async def fill() -> None:
        conn = await asyncpg.connect(settings.postgres.dsn())
        try:
            await loms_bench.fill(conn, RELAY_EVENTS, first_order=secrets.randbelow(10**9))
        finally:
            await conn.close()

    asyncio.run(fill())
    env = {**os.environ, **loms_bench.env_for(settings, ORDERLY_LOG__LEVEL="INFO")}
    args = ["-m", "orderly", "loms", "relay", "--burst", "--batch-size", str(loms_bench.RELAY_BATCH)]
    python = str(tree / ".venv" / "bin" / "python")
    done = subprocess.run([python, *args], check=False, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the relay of {tree.name} exited {done.returncode}: {done.stderr[-2000:]}")
    [line] = [json.loads(x) for x in done.stderr.splitlines() if "relay burst done" in x]
    if line["published"] != RELAY_EVENTS:
        raise RuntimeError(f"the relay of {tree.name} published {line['published']} of {RELAY_EVENTS}")
    return RELAY_EVENTS / float(line["drain_s"])


def measure_loms_relay(trees: dict[str, Path], *, pairs: int, seconds: int, together: bool) -> dict[str, Any]:
    """The loms relay draining a 200,000-event outbox into Kafka, each side on its own database and topics, in turn
    (A, B, then B, A: a drain is a second or two, and two started together would not overlap evenly)."""
    del seconds, together  # a drain takes as long as it takes; always in turn
    run = secrets.token_hex(3)
    base = InfraSettings()
    settings = {
        side: LomsSettings(
            postgres=base.postgres.model_copy(update={"database": f"bench_relay_{side.lower()}_{run}"}),
            kafka=base.kafka.model_copy(update={"topic_prefix": f"bench.{run}.{side.lower()}."}),
        )
        for side in ("A", "B")
    }
    try:
        for one in settings.values():
            asyncio.run(loms_migrate(one.postgres))
            init_topics(one)
        return {"loms-relay": in_turn(pairs, lambda side: relay_drain(trees[side], settings[side]))}
    finally:
        for one in settings.values():
            asyncio.run(drop_postgres_database(base.postgres, one.postgres.database))


MEASURES: dict[str, Callable[..., dict[str, Any]]] = {
    "hello": measure_hello,
    "ingest": measure_ingest,
    "ingest-drain": measure_ingest_drain,
    "items": measure_items,
    "items-uncached": measure_items_uncached,
    "items-mix": measure_items_mix,
    "sums": measure_sums,
    "loms": measure_loms,
    "loms-relay": measure_loms_relay,
}
"""Each target's measurement, in the order of a run; a measurement returns its figures by name."""
TARGETS = tuple(MEASURES)


def render(
    base: str, head: str, results: dict[str, dict[str, Any]], *, pairs: int, seconds: int, together: bool
) -> str:
    how = "A and B loaded at once, one wrk each" if together else "A, B / B, A alternating"
    lines = [
        f"A = `{base[:12]}`, B = `{head[:12]}`; one run of `python -m bench.ab_paired`: both servers up, {pairs} pairs"
        f" of {seconds} s wrk bursts ({how}); B / A is the median of the per-pair ratios.",
        f"Measured {datetime.now(UTC).isoformat(timespec='seconds')}; flagged when B < {TOLERANCE:.0%} of A.",
        "",
        "| target | A req/s (median) | B req/s (median) | B / A, median of pairs | pairs' range |",
        "|---|---:|---:|---:|---|",
    ]
    names = {
        "hello": "hello-world, platform HTTP stack",
        "ingest": "ingest `GET /ingest`, 1 process",
        "ingest-drain": "ingest worker draining 20,000 requests, batch 500 (req/s; in turn)",
        "ingest-drain-1": "ingest worker draining 2,000 requests, batch 1 (req/s; in turn)",
        "items-cached": "items `GET /items/list`, cached page",
        "items-uncached": "items `GET /items/list`, random pages (mostly misses), own cache per side",
        "items-writes": "items writes (20 % create, 80 % update)",
        "items-mix": "items 90/10 list/update mix, own relay and audit per side",
        "items-mix-probe": "the same mix with the change-log lag probe on each side",
        "sums": "sums `GET /sum`, batched, 1 instance",
        "sums-reference": "sums `GET /sum`, reference (one transaction per request), 1 instance",
        "loms": "loms `POST /order/create`, 1 process (orders per API CPU-second)",
        "ingest-2": "ingest `GET /ingest`, 2 processes",
        "loms-relay": "loms relay draining 200,000 outbox events to Kafka (events/s; in turn)",
    }
    for target, r in results.items():
        flag = " ⚠" if r["median_ratio"] < TOLERANCE else ""
        unit = "req_per_cpu_s" if "A_req_per_cpu_s" in r else "req_per_s"
        a, b = statistics.median(r[f"A_{unit}"]), statistics.median(r[f"B_{unit}"])
        spread = f"{min(r['ratios']):.2f} to {max(r['ratios']):.2f}"
        lines.append(f"| {names[target]} | {a:,.0f} | {b:,.0f} | {r['median_ratio']:.3f}{flag} | {spread} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = revisions_parser(__doc__)
    parser.add_argument(
        "--pairs", type=int, default=12, choices=range(2, 101), metavar="N", help="bursts per side and target (2-100)"
    )
    parser.add_argument(
        "--seconds", type=int, default=3, choices=range(1, 61), metavar="S", help="seconds of one burst (1-60)"
    )
    parser.add_argument(
        "--alternate", action="store_true", help="load A and B in turn (A, B / B, A) instead of at the same time"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, of {', '.join(TARGETS)} (default: all)",
    )
    args = parser.parse_args()
    targets = set(args.targets.split(","))
    if not targets or not targets <= set(TARGETS):
        parser.error(f"--targets takes {', '.join(TARGETS)}, not {args.targets!r}")

    subprocess.run([sys.executable, "-m", "orderly", "stack", "up"], check=True)
    base, a_tree = checkout(args.base)
    head, b_tree = checkout(args.head)
    if a_tree != b_tree:  # the same revision on both sides (--head = --base) is the A/A control of the method
        share_harness(b_tree, a_tree)
    trees = {"A": a_tree, "B": b_tree}
    how = {"pairs": args.pairs, "seconds": args.seconds, "together": not args.alternate}
    results: dict[str, dict[str, Any]] = {}
    for target, measure in MEASURES.items():
        if target in targets:
            results |= measure(trees, **how)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"base": base, "head": head, **how, "results": results}
    (RESULTS / "ab_paired.json").write_text(json.dumps(record, indent=2) + "\n")
    table = render(base, head, results, **how)
    (RESULTS / "ab_paired.md").write_text(table)
    print(table)
    return 1 if "⚠" in table else 0


if __name__ == "__main__":
    raise SystemExit(main())
