"""`make bench-items`: the items service on the local stack, measured with wrk and a lag probe.

Phases: GET /items/list cached (one page, all hits) and uncached (random pages, mostly misses); a 90/10 read/write
mix with the change-log lag (commit -> visible in /logs) sampled meanwhile; a write load (writes only, as fast as the
service takes them) with rows per ClickHouse insert and the lag measured during it; a backlog drain for rows per
ClickHouse insert; the hello-world ceiling of the same HTTP stack. Results: bench/results/items.json and items.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import psutil
import redis

from bench.databases import drop_postgres_database
from bench.reporting import save_results
from orderly.items.migrate import migrate
from orderly.items.settings import ItemsOptions, ItemsSettings
from orderly.platform.pools import clickhouse_client
from orderly.platform.settings import ClickHouseSettings, NatsSettings, PostgresSettings, RedisSettings
from orderly.runner import wait_http_ready

DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
SEED_ITEMS = 1000

# Each wrk thread runs its own Lua state; seeded alike (os.time() alone), the two threads sent the same sequence
# of requests side by side, so about half of the "random" requests repeated the other thread's, concurrently.
# setup() hands every thread its own number to seed with.
SEED_LUA = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end
function init(args)
  math.randomseed(os.time() * 16 + thread_number)
end
"""

UNCACHED_LUA = (
    SEED_LUA
    + """
request = function()
  return wrk.format("GET", "/items/list?limit=" .. math.random(10, 50) .. "&offset=" .. math.random(1, 1000))
end
"""
)

MIX_LUA = (
    SEED_LUA
    + f"""
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  if math.random() < 0.1 then
    local id = math.random(1, {SEED_ITEMS})
    return wrk.format("PATCH", "/item/update?id=" .. id .. "&campaignId=1", headers,
                      '{{"name":"bench-' .. math.random(1, 1000000000) .. '"}}')
  end
  return wrk.format("GET", "/items/list?limit=10&offset=" .. math.random(1, 3))
end
"""
)


# Writes only, as fast as the service takes them: "rows per ClickHouse insert under load" needs a load of changes,
# and the 90/10 mix makes only ~80 per second. One in five creates (serialised by the priority lock), the rest
# update a random seeded item.
WRITE_LUA = (
    SEED_LUA
    + f"""
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  if math.random() < 0.2 then
    return wrk.format("POST", "/item/create?campaignId=1", headers,
                      '{{"name":"load-' .. math.random(1, 1000000000) .. '"}}')
  end
  local id = math.random(1, {SEED_ITEMS})
  return wrk.format("PATCH", "/item/update?id=" .. id .. "&campaignId=1", headers,
                    '{{"name":"load-' .. math.random(1, 1000000000) .. '"}}')
end
"""
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_settings(tag: str) -> ItemsSettings:
    return ItemsSettings(
        postgres=PostgresSettings(database=f"bench_{tag}"),
        redis=RedisSettings(key_prefix=f"bench:{tag}:"),
        nats=NatsSettings(stream_prefix=f"BENCH_{tag}_"),
        clickhouse=ClickHouseSettings(database=f"bench_{tag}"),
        items=ItemsOptions(),
    )


def env_for(settings: ItemsSettings) -> dict[str, str]:
    env = {**os.environ, "ORDERLY_LOG__FORMAT": "json"}
    for resource in ("postgres", "redis", "nats", "clickhouse", "items"):
        for key, value in getattr(settings, resource).model_dump().items():
            secret = getattr(getattr(settings, resource), key)
            env[f"ORDERLY_{resource.upper()}__{key.upper()}"] = str(
                secret.get_secret_value() if hasattr(secret, "get_secret_value") else value
            )
    return env


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self._file = self.log.open("w")
        self.popen = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=self._file)

    def rss_mb(self) -> float:
        """Largest resident set of the process and each of its children (granian runs a worker process)."""
        try:
            root = psutil.Process(self.popen.pid)
            return max(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
        except psutil.Error:
            return float("nan")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._file.close()


def wait_ready(port: int) -> None:
    if not wait_http_ready(port, timeout=60):
        raise RuntimeError(f"nothing ready on port {port}")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, *, lua: str | None = None, duration: str = DURATION) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration}", "--latency"]
    script = None
    if lua:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
        script.write(lua)
        script.close()
        args += ["-s", script.name]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if script:
        os.unlink(script.name)
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}  # type: ignore[index]
    for pct in ("50", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        result[f"p{pct}_ms"] = round(float(value) * UNITS[unit], 3)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(errors[1]) if errors else 0
    result["requests"] = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    return result


def cache_counts(base: str) -> tuple[float, float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    found = {m[1]: float(m[2]) for m in re.finditer(r'items_list_cache_total\{result="(hit|miss)"\} ([\d.e+]+)', text)}
    return found.get("hit", 0.0), found.get("miss", 0.0)


def with_hit_ratio(base: str, run: Any) -> dict[str, float]:
    hits0, misses0 = cache_counts(base)
    result: dict[str, float] = run()
    hits, misses = cache_counts(base)
    dh, dm = hits - hits0, misses - misses0
    result["cache_hit_ratio"] = round(dh / (dh + dm), 4) if dh + dm else 0.0
    return result


async def seed(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for start in range(0, SEED_ITEMS, 50):
            await asyncio.gather(
                *(
                    client.post("/item/create", params={"campaignId": 1}, json={"name": f"seed-{n}"})
                    for n in range(start, start + 50)
                )
            )


# How often the lag probe asks /logs whether its change arrived: the resolution of the lag figures. Each ask is a
# ClickHouse query with FINAL; at 20 ms the probe alone cost the write-load phase a measurable share of the CPU.
PROBE_POLL_S = 0.05


async def lag_probe(base: str, stop: asyncio.Event) -> list[float]:
    """Update an item, then poll /logs until its event is there; seconds from the write's response to visibility.

    The probe updates an item of its own: the loads update the seeded items, and an update of the probed item by
    the load made its newest event someone else's, so the probe waited out its 30 s (a sample lost, and the phase
    it measured long over).
    """
    lags: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        created = await client.post("/item/create", params={"campaignId": 1}, json={"name": "lag-probe"})
        item_id = created.json()["id"]
        n = 0
        while not stop.is_set():
            n += 1
            name = f"probe-{n}-{secrets.token_hex(3)}"
            response = await client.patch("/item/update", params={"id": item_id, "campaignId": 1}, json={"name": name})
            committed = time.monotonic()
            if response.status_code != 200:
                continue
            while time.monotonic() - committed < 30:
                logs = (await client.get("/logs", params={"itemId": item_id, "limit": 1})).json()["logs"]
                if logs and logs[0]["name"] == name:
                    lags.append(time.monotonic() - committed)
                    break
                await asyncio.sleep(PROBE_POLL_S)
    return lags


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def insert_summary(sizes: list[int]) -> dict[str, float]:
    return {
        "inserts": len(sizes),
        "mean": round(statistics.fmean(sizes), 1) if sizes else 0,
        "median": statistics.median(sizes) if sizes else 0,
        "min": min(sizes, default=0),
        "max": max(sizes, default=0),
    }


def lag_summary(lags: list[float]) -> dict[str, float]:
    return {"samples": len(lags), "p50_s": round(percentile(lags, 50), 3), "p99_s": round(percentile(lags, 99), 3)}


def insert_sizes(log: Path) -> list[int]:
    sizes = []
    for line in log.read_text().splitlines():
        if '"inserted change events"' in line:
            sizes.append(int(json.loads(line)["rows"]))
    return sizes


async def stream_messages(settings: ItemsSettings) -> int:
    """Events in the stream once the outbox is empty (each event is there once: Nats-Msg-Id dedupe)."""
    conn = await asyncpg.connect(settings.postgres.dsn())
    try:
        deadline = time.monotonic() + 120
        while await conn.fetchval("SELECT count(*) FROM items_outbox"):
            if time.monotonic() > deadline:
                raise RuntimeError("the relay did not empty the outbox")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    nc = await nats.connect(settings.nats.url())
    try:
        return int((await nc.jetstream().stream_info(settings.stream_name)).state.messages)
    finally:
        await nc.close()


async def drop(settings: ItemsSettings) -> None:
    await drop_postgres_database(settings.postgres, settings.postgres.database)
    client = clickhouse_client(settings.clickhouse, database="default")
    try:
        client.execute(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")
    finally:
        client.disconnect()
    nc = await nats.connect(settings.nats.url())
    try:
        await nc.jetstream().delete_stream(settings.stream_name)
    except Exception:
        pass
    finally:
        await nc.close()
    clear_cache(settings)


def clear_cache(settings: ItemsSettings) -> None:
    """Delete every cache key of ``settings``' prefix (pages and generations): the next reads all miss."""
    r = redis.Redis.from_url(settings.redis.url())
    for key in r.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000):
        r.delete(key)
    r.close()


def main() -> None:
    settings = bench_settings(secrets.token_hex(3))
    asyncio.run(migrate(settings))
    env = env_for(settings)
    api_port, hello_port = free_port(), free_port()
    python = sys.executable
    procs: dict[str, Proc] = {}
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores",
        "wrk": f"-t2 -c{CONNECTIONS} -d{DURATION}",
        "seed_items": SEED_ITEMS,
    }
    try:
        procs["api"] = Proc([python, "-m", "orderly", "items", "api", "--port", str(api_port)], env, "api")
        procs["relay"] = Proc([python, "-m", "orderly", "items", "relay"], env, "relay")
        procs["audit"] = Proc([python, "-m", "orderly", "items", "audit"], env, "audit")
        procs["hello"] = Proc([python, "-m", "bench.hello_app", "--port", str(hello_port)], env, "hello")
        wait_ready(api_port)
        wait_ready(hello_port)
        base = f"http://127.0.0.1:{api_port}"
        asyncio.run(seed(base))

        results["hello_world"] = wrk(f"http://127.0.0.1:{hello_port}/hello")
        httpx.get(f"{base}/items/list")
        results["list_cached"] = with_hit_ratio(base, lambda: wrk(f"{base}/items/list"))
        results["list_uncached"] = with_hit_ratio(base, lambda: wrk(f"{base}/items/list", lua=UNCACHED_LUA))

        sizes_before = len(insert_sizes(procs["audit"].log))

        sizes_at_end = 0

        async def with_probe(lua: str) -> tuple[dict[str, float], list[float]]:
            nonlocal sizes_at_end
            stop = asyncio.Event()
            probe = asyncio.create_task(lag_probe(base, stop))
            load = await asyncio.to_thread(with_hit_ratio, base, lambda: wrk(f"{base}/items/list", lua=lua))
            sizes_at_end = len(insert_sizes(procs["audit"].log))
            stop.set()
            return load, await probe

        results["mix_90_10"], lags = asyncio.run(with_probe(MIX_LUA))
        mix_sizes = insert_sizes(procs["audit"].log)[sizes_before:]
        results["change_log_lag"] = lag_summary(lags)
        results["clickhouse_rows_per_insert_during_mix"] = insert_summary(mix_sizes)

        # Write load: the inserts logged from its start until its last lag sample was seen (the probe's last write
        # is the phase's last change, so the batch holding it is counted too). Those logged before wrk ended were
        # flushed under load; the rest are the tail the flush timer sent after the load stopped (reported apart).
        sizes_before = len(insert_sizes(procs["audit"].log))
        writes, lags = asyncio.run(with_probe(WRITE_LUA))
        writes.pop("cache_hit_ratio", None)
        seconds = float(DURATION.removesuffix("s"))
        phase_sizes = insert_sizes(procs["audit"].log)[sizes_before:]
        results["write_load"] = {
            **writes,
            "changes_per_s": round((writes["requests"] - writes["non_2xx"]) / seconds, 1),
            "change_log_lag": lag_summary(lags),
            "clickhouse_rows_per_insert": insert_summary(phase_sizes),
            "clickhouse_rows_per_insert_while_loaded": insert_summary(phase_sizes[: sizes_at_end - sizes_before]),
        }

        # Backlog drain: the audit process is away while 5,000 changes are made, then catches up.
        procs["audit"].stop()
        mix2 = wrk(f"{base}/items/list", lua=MIX_LUA.replace("< 0.1", "< 1.0"), duration="5s")
        procs["audit"] = Proc([python, "-m", "orderly", "items", "audit"], env, "audit2")
        in_stream = asyncio.run(stream_messages(settings))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            total = httpx.get(f"{base}/logs", params={"limit": 1}, timeout=10).json()["meta"]["total"]
            if total >= in_stream:
                break
            time.sleep(0.5)
        drain_sizes = insert_sizes(procs["audit"].log)
        results["clickhouse_rows_per_insert_backlog"] = {"writes": mix2["requests"], **insert_summary(drain_sizes)}
        results["rss_mb"] = {name: round(p.rss_mb(), 1) for name, p in procs.items()}
    finally:
        for proc in procs.values():
            proc.stop()
        asyncio.run(drop(settings))
    print(save_results("items", results, markdown))


def markdown(r: dict[str, Any]) -> str:
    rows = [
        "| measurement | req/s | p50 ms | p99 ms | cache hit ratio | non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("hello_world", "hello-world JSON (stack ceiling)"),
        ("list_cached", "GET /items/list, cached"),
        ("list_uncached", "GET /items/list, random pages (mostly misses)"),
        ("mix_90_10", "90% list / 10% PATCH update"),
        ("write_load", "writes only (20% create / 80% update)"),
    ):
        m = r[key]
        rows.append(
            f"| {label} | {m['rps']:.0f} | {m['p50_ms']} | {m['p99_ms']} | {m.get('cache_hit_ratio', '-')} "
            f"| {m['non_2xx']} |"
        )
    lag, mix, drain = (
        r["change_log_lag"],
        r["clickhouse_rows_per_insert_during_mix"],
        r["clickhouse_rows_per_insert_backlog"],
    )
    load = r["write_load"]
    loaded = load.get("clickhouse_rows_per_insert_while_loaded", {"mean": "-", "min": "-", "inserts": 0})
    cached, uncached, hello = r["list_cached"]["rps"], r["list_uncached"]["rps"], r["hello_world"]["rps"]
    rows += [
        "",
        f"- cached / uncached: {cached / uncached:.1f}x; cached / hello-world: {cached / hello:.2f}x",
        f"- change-log lag (write response -> visible in /logs, {lag['samples']} samples during the mix): "
        f"p50 {lag['p50_s']} s, p99 {lag['p99_s']} s",
        f"- rows per ClickHouse insert during the mix: mean {mix['mean']}, max {mix['max']} ({mix['inserts']} inserts)",
        f"- write load: {load['changes_per_s']} changes/s; rows per ClickHouse insert: mean "
        f"{load['clickhouse_rows_per_insert']['mean']}, median {load['clickhouse_rows_per_insert']['median']}, max "
        f"{load['clickhouse_rows_per_insert']['max']} ({load['clickhouse_rows_per_insert']['inserts']} inserts; of "
        f"them flushed while the load ran: mean {loaded['mean']}, min {loaded['min']} ({loaded['inserts']} inserts)); "
        f"change-log lag p50 {load['change_log_lag']['p50_s']} s, p99 {load['change_log_lag']['p99_s']} s "
        f"({load['change_log_lag']['samples']} samples)",
        f"- rows per ClickHouse insert draining a backlog of {drain['writes']} writes: mean {drain['mean']}, "
        f"max {drain['max']} ({drain['inserts']} inserts)",
        f"- RSS per process (MB, largest of parent/worker): {r['rss_mb']}",
        f"- wrk {r['wrk']}; machine: {r['machine']}",
        "",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
