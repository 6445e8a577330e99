"""Benchmark of loms + notifier on the local stack (run `make bench-loms`).

Measures, in one run and on a private database and topic prefix:
- relay throughput draining a 100,000-event outbox backlog (the real `orderly loms relay --burst` process);
- a row-at-a-time relay (`--batch-size 1`) on a smaller backlog, since it is two orders of magnitude slower;
- the relay's two halves alone: a raw idempotent confluent-kafka producer loop, and a raw PostgreSQL
  claim-and-delete loop over the same outbox;
- commit -> notifier-log latency p50/p99 with api, relay and 3 notifiers running and 500 orders/s offered;
- peak RSS of every process involved.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import psutil
from confluent_kafka import Producer

from bench.databases import drop_postgres_database
from bench.reporting import RESULTS, save_results
from orderly.loms.kafka_admin import admin_client, init_topics
from orderly.loms.relay import claim_batch, delete_batch, producer_config
from orderly.loms.schema import migrate
from orderly.loms.settings import LomsSettings
from orderly.platform.settings import InfraSettings

BACKLOG = int(os.environ.get("BENCH_LOMS_BACKLOG", "100000"))
ROW_BACKLOG = int(os.environ.get("BENCH_LOMS_ROW_BACKLOG", "3000"))
RATE = int(os.environ.get("BENCH_LOMS_RATE", "500"))
SECONDS = int(os.environ.get("BENCH_LOMS_SECONDS", "20"))
ROUNDS = int(os.environ.get("BENCH_LOMS_ROUNDS", "3"))
RELAY_BATCH = 5000
CONNECTIONS = 100
# Order creates as fast as wrk can send them (also bench.ab_paired's loms target) ...
CREATE_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil,
    '{"user":' .. (counter % 1000 + 1) .. ',"items":[{"sku":' .. (1001 + counter % 20) .. ',"count":1}]}')
end
"""
# ... and paced, for the latency run.
WRK_SCRIPT = (
    CREATE_SCRIPT
    + """delay = function() return DELAY_MS end
"""
)

FILL_SQL = """
INSERT INTO outbox (event_id, order_id, status, payload)
SELECT e.id, e.order_id, 'awaiting payment',
       jsonb_build_object('event_id', e.id, 'order_id', e.order_id, 'status', 'awaiting payment',
                          'occurred_at', to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                          'details', jsonb_build_object('user', e.order_id % 1000,
                                                        'items', jsonb_build_array(
                                                            jsonb_build_object('sku', 1001, 'count', 2))))
  FROM (SELECT gen_random_uuid() AS id, $1::bigint + g AS order_id FROM generate_series(1, $2) AS g) AS e
"""


class Proc:
    """A spawned `python -m orderly …` whose stdout lines are timestamped on arrival and whose RSS is sampled."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], *, keep_lines: bool = False, keep_errors: bool = False
    ) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "orderly", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if keep_errors else subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.peak_rss = 0
        self._keep = keep_lines
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._rss, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if self._keep:
                self.lines.append((time.time(), line))

    def _rss(self) -> None:
        try:
            root = psutil.Process(self.popen.pid)
            while self.popen.poll() is None:
                tree = [root, *root.children(recursive=True)]
                # Per process: the largest member (granian runs the app in a worker child).
                self.peak_rss = max(self.peak_rss, *(p.memory_info().rss for p in tree if p.is_running()))
                time.sleep(0.2)
        except psutil.Error:
            return

    def stop(self) -> int:
        self.popen.terminate()
        code = self.popen.wait(20)
        for thread in self._threads:
            thread.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return code


def env_for(settings: LomsSettings, **extra: str) -> dict[str, str]:
    return {
        "ORDERLY_POSTGRES__DATABASE": settings.postgres.database,
        "ORDERLY_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "ORDERLY_LOG__LEVEL": "WARNING",
        **extra,
    }


async def fill(conn: asyncpg.Connection, count: int, first_order: int) -> None:
    await conn.execute("TRUNCATE outbox")
    await conn.execute(FILL_SQL, first_order, count)
    await conn.execute("VACUUM ANALYZE outbox")


async def relay_run(conn: asyncpg.Connection, settings: LomsSettings, *, count: int, batch: int) -> dict[str, Any]:
    """Drain a backlog with the real `orderly loms relay --burst` process; it reports its own draining time
    (first claim to last delete, producer connection included) on stderr."""
    await fill(conn, count, first_order=secrets.randbelow(10**9))
    started = time.perf_counter()
    proc = Proc(
        f"relay-b{batch}",
        ["loms", "relay", "--burst", "--batch-size", str(batch)],
        env_for(settings, ORDERLY_LOG__LEVEL="INFO"),
        keep_errors=True,
    )
    code = await asyncio.to_thread(proc.popen.wait, 1800)
    wall = time.perf_counter() - started
    assert proc.popen.stderr is not None
    stderr = proc.popen.stderr.read()
    proc.popen.stderr.close()
    proc.stop()
    assert code == 0, stderr
    assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    [done] = [json.loads(line) for line in stderr.splitlines() if "relay burst done" in line]
    assert done["published"] == count
    draining = float(done["drain_s"])
    return {
        "events": count,
        "batch_size": batch,
        "seconds_incl_startup": round(wall, 3),
        "seconds_draining": round(draining, 3),
        "events_per_s": round(count / draining),
        "peak_rss_mb": round(proc.peak_rss / 2**20, 1),
    }


async def raw_pg_loop(conn: asyncpg.Connection, *, count: int, batch: int) -> dict[str, Any]:
    """The relay's PostgreSQL half alone: its own claim and delete statements in a loop, with Kafka taken out."""
    await fill(conn, count, first_order=secrets.randbelow(10**9))
    started = deleted_at = time.perf_counter()
    moved = 0
    while rows := await claim_batch(conn, batch):
        await delete_batch(conn, rows)
        moved += len(rows)
        deleted_at = time.perf_counter()
    # The clock stops at the last delete, not after the final empty claim: the relay's draining time (first claim
    # sent -> last delete) does not include its final empty claim either.
    seconds = deleted_at - started
    return {"events": moved, "batch_size": batch, "seconds": round(seconds, 3), "events_per_s": round(moved / seconds)}


def raw_producer_loop(settings: LomsSettings, *, count: int, payload: bytes) -> dict[str, Any]:
    """The idempotent producer alone (same config as the relay), producing and flushing ``count`` messages."""
    producer = Producer(producer_config(settings))
    topic = settings.events_topic()
    failed = 0

    def delivered(err: Any, _msg: Any) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    producer.produce(topic, value=payload, key=b"warm-up")  # connect and get a producer id outside the clock
    assert producer.flush(30) == 0
    started = time.perf_counter()
    for n in range(count):
        while True:
            try:
                producer.produce(topic, value=payload, key=str(n).encode(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - started
    assert remaining == 0
    assert failed == 0
    return {"events": count, "seconds": round(seconds, 3), "events_per_s": round(count / seconds)}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every round's figure alongside."""
    ordered = sorted(runs, key=lambda r: r["events_per_s"])
    return {**ordered[len(ordered) // 2], "rounds_events_per_s": [r["events_per_s"] for r in runs]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency_run(settings: LomsSettings, port: int) -> dict[str, Any]:
    """api + relay + 3 notifiers; open-loop creates at RATE/s; latency = notifier line read minus event occurred_at."""
    env = env_for(settings, ORDERLY_HTTP__PORT=str(port))
    procs = [
        Proc("api", ["loms", "api", "--port", str(port), "--workers", "2"], env),
        Proc("relay", ["loms", "relay"], env),
        *(Proc(f"notifier-{n}", ["notifier", "--instance", f"n{n}"], env, keep_lines=True) for n in (1, 2, 3)),
    ]
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        for _ in range(300):
            try:
                if (await http.get("/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    await asyncio.sleep(3)  # let the notifier group settle before the clock starts
    # wrk (C, cheap) offers the load: each of CONNECTIONS connections pauses between requests so that, with ~40 ms
    # per request, together they offer about RATE/s (a closed loop with think time; the achieved rate is reported).
    script = RESULTS / ".loms-create.lua"
    script.write_text(WRK_SCRIPT.replace("DELAY_MS", str(max(0, CONNECTIONS * 1000 // RATE - 40))))
    done = await asyncio.to_thread(
        subprocess.run,
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "-s", str(script), f"{url}/order/create"],
        capture_output=True,
        text=True,
        check=True,
    )
    script.unlink()
    achieved = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", done.stdout)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    errors = int(bad[1]) if bad else 0
    notifiers = [p for p in procs if p.name.startswith("notifier")]
    deadline = time.monotonic() + 120
    while sum(len(p.lines) for p in notifiers) < 2 * total and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    latencies = []
    for proc in notifiers:
        for seen_at, line in proc.lines:
            event = json.loads(line)
            occurred = datetime.fromisoformat(event["occurred_at"]).timestamp()
            latencies.append((seen_at - occurred) * 1000)
    rss = {}
    for proc in reversed(procs):
        proc.stop()
        rss[proc.name] = round(proc.peak_rss / 2**20, 1)
    return {
        "orders_created": total,
        "rate_offered_per_s": RATE,
        "rate_achieved_per_s": round(achieved),
        "http_api_workers": 2,
        "http_errors": errors,
        "events_logged": len(latencies),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p99": round(percentile(latencies, 0.99), 1),
        "latency_ms_max": round(max(latencies), 1),
        "peak_rss_mb": rss,
    }


def markdown(result: dict[str, Any]) -> str:
    r, row, pg, kafka, lat = (
        result["relay"],
        result["relay_row_at_a_time"],
        result["raw_pg_claim_delete"],
        result["raw_producer"],
        result["latency"],
    )
    slower_half = min(pg["events_per_s"], kafka["events_per_s"])
    lines = [
        f"### loms + notifier ({result['measured_at']}, 2-core machine; one run, noisy)",
        "",
        "| measurement | events | events/s | notes |",
        "|---|---:|---:|---|",
        f"| relay, batch {r['batch_size']}, median of {len(r['rounds_events_per_s'])} rounds | "
        f"{r['events']:,} | {r['events_per_s']:,} | "
        f"{r['seconds_draining']} s draining, {r['seconds_incl_startup']} s incl. start; "
        f"{r['events_per_s'] / slower_half:.2f}x the slower half; rounds {r['rounds_events_per_s']} |",
        f"| relay, row at a time (batch 1) | {row['events']:,} | {row['events_per_s']:,} | "
        f"{row['seconds_draining']} s draining |",
        f"| raw PostgreSQL claim-and-delete, batch {pg['batch_size']}, median | {pg['events']:,} | "
        f"{pg['events_per_s']:,} | "
        f"no Kafka; rounds {pg['rounds_events_per_s']} |",
        f"| raw idempotent producer (acks=all), median | {kafka['events']:,} | {kafka['events_per_s']:,} | "
        f"no PostgreSQL; rounds {kafka['rounds_events_per_s']} |",
        "",
        "| commit -> notifier log | value |",
        "|---|---:|",
        f"| orders offered / achieved per s | {lat['rate_offered_per_s']} / {lat['rate_achieved_per_s']} |",
        f"| events logged | {lat['events_logged']:,} |",
        f"| p50 | {lat['latency_ms_p50']} ms |",
        f"| p99 | {lat['latency_ms_p99']} ms |",
        f"| max | {lat['latency_ms_max']} ms |",
        "",
        "| process | peak RSS |",
        "|---|---:|",
        f"| relay draining the backlog | {r['peak_rss_mb']} MB |",
        *(f"| {name} (latency run) | {mb} MB |" for name, mb in lat["peak_rss_mb"].items()),
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    base = InfraSettings()
    run = secrets.token_hex(3)
    settings = LomsSettings(
        postgres=base.postgres.model_copy(update={"database": f"bench_loms_{run}", "pool_max": 20}),
        kafka=base.kafka.model_copy(update={"topic_prefix": f"bench.{run}."}),
    )
    await migrate(settings.postgres)
    init_topics(settings)
    conn = await asyncpg.connect(settings.postgres.dsn())
    try:
        await fill(conn, 1, first_order=1)
        payload = (await conn.fetchval("SELECT payload::text FROM outbox")).encode()
        await conn.execute("TRUNCATE outbox")
        # The machine is shared and noisy: the relay and its two halves are measured in alternating rounds and the
        # median of each is reported, so a burst of someone else's load does not land on one of them only.
        relays, pgs, kafkas = [], [], []
        for n in range(ROUNDS):
            print(f"round {n + 1}/{ROUNDS}: relay, raw PostgreSQL loop, raw producer …", file=sys.stderr)
            relays.append(await relay_run(conn, settings, count=BACKLOG, batch=RELAY_BATCH))
            pgs.append(await raw_pg_loop(conn, count=BACKLOG, batch=RELAY_BATCH))
            kafkas.append(await asyncio.to_thread(raw_producer_loop, settings, count=BACKLOG, payload=payload))
            print(relays[-1], pgs[-1], kafkas[-1], file=sys.stderr)
        relay, pg, kafka = median_run(relays), median_run(pgs), median_run(kafkas)
        print("row-at-a-time relay …", file=sys.stderr)
        row = await relay_run(conn, settings, count=ROW_BACKLOG, batch=1)
        print(row, file=sys.stderr)
        print(f"latency at {RATE} orders/s for {SECONDS} s …", file=sys.stderr)
        # A fresh topic prefix so the notifiers read only this run's orders.
        lat_settings = settings.model_copy(
            update={"kafka": settings.kafka.model_copy(update={"topic_prefix": f"bench.{run}.lat."})}
        )
        init_topics(lat_settings)
        latency = await latency_run(lat_settings, port=18491)
        print(latency, file=sys.stderr)
    finally:
        await conn.close()
        await drop_postgres_database(settings.postgres, settings.postgres.database)
        client = admin_client(settings.kafka)
        topics = [t for t in client.list_topics(timeout=10).topics if t.startswith(f"bench.{run}.")]
        if topics:
            for future in client.delete_topics(topics, operation_timeout=30).values():
                future.result()
    result = {
        "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": "2-core VM; one run, figures are noisy",
        "relay": relay,
        "relay_row_at_a_time": row,
        "raw_pg_claim_delete": pg,
        "raw_producer": kafka,
        "latency": latency,
    }
    print(save_results("loms", result, markdown))


if __name__ == "__main__":
    asyncio.run(main())
