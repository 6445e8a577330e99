"""Benchmark of the sums service (`make bench-sums`): batched vs the seed's reference design vs a raw SQL loop.

Each mode gets a fresh MySQL database and Redis prefix on the local stack, three API instances on free ports, and
wrk (one process per instance, 64 connections in all) sending 50,000 requests: 90 % new keys, 10 % repeats of recent
keys (often concurrent with the first). Afterwards exactly-once is checked: the final sum must equal the sum of the
numbers of the keys that were applied (a key's number is a function of its name). The raw loop is 16 clients each
running INSERT key + UPDATE hot row + SELECT + COMMIT, one request per transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncmy
import httpx
import psutil
import redis

from bench.reporting import save_results
from orderly.platform.settings import InfraSettings
from orderly.sums.cli import migrate_database

ROOT = Path(__file__).resolve().parent


def free_ports(count: int) -> tuple[int, ...]:
    """Ports nobody listens on: 8201-8203 may be serving `orderly up` (granian binds with SO_REUSEPORT, so a second
    server on the same port silently shares its connections)."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return tuple(int(sock.getsockname()[1]) for sock in socks)
    finally:
        for sock in socks:
            sock.close()


PORTS = free_ports(3)
RESULT = re.compile(r"^RESULT (\{.*\})$", re.MULTILINE)


def key_number(key: str) -> int:
    """The number the load script sends with a key named ``<tag>-<index>``."""
    return int(key.rsplit("-", 1)[1]) % 997 + 1


@dataclass
class RssSampler:
    """Peak resident memory of each instance's process tree (granian supervisor + worker), sampled every 100 ms."""

    pids: list[int]
    peak_tree: list[int] = field(default_factory=list)
    peak_worker: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.peak_tree = [0] * len(self.pids)
        self.peak_worker = [0] * len(self.pids)
        while not self.stop.wait(0.1):
            for i, pid in enumerate(self.pids):
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                    sizes = [p.memory_info().rss for p in tree]
                except psutil.Error:
                    continue
                self.peak_tree[i] = max(self.peak_tree[i], sum(sizes))
                self.peak_worker[i] = max(self.peak_worker[i], max(sizes[1:], default=sizes[0]))


def mib(n: int) -> float:
    return round(n / 2**20, 1)


async def fresh_settings(tag: str) -> InfraSettings:
    base = InfraSettings()
    database = f"bench_sums_{tag}"
    settings = base.model_copy(
        update={
            "mysql": base.mysql.model_copy(update={"database": database}),
            "redis": base.redis.model_copy(update={"key_prefix": f"bench:{tag}:"}),
        }
    )
    await migrate_database(settings.mysql)
    return settings


async def mysql_connect(settings: InfraSettings) -> Any:
    m = settings.mysql
    return await asyncmy.connect(
        host=m.host, port=m.port, user=m.user, password=m.password.get_secret_value(), db=m.database
    )


async def drop_database(settings: InfraSettings) -> None:
    conn = await mysql_connect(settings)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql.database}`")
    finally:
        conn.close()
    client = redis.Redis.from_url(settings.redis.url())
    try:
        for key in client.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def start_instances(settings: InfraSettings, mode: str) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "ORDERLY_MYSQL__DATABASE": settings.mysql.database,
        "ORDERLY_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "ORDERLY_LOG__LEVEL": "WARNING",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "orderly", "sums", "api", "--port", str(port), "--mode", mode],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for port in PORTS
    ]
    deadline = time.monotonic() + 60
    for port in PORTS:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance on {port} not ready")
            time.sleep(0.2)
    return procs


def stop_instances(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_wrk(total: int, connections: int, tag: str) -> tuple[list[dict[str, Any]], float]:
    """Run one wrk per instance until ``total`` requests were answered; wrk stops on SIGINT and prints its result.

    Each wrk's script stops its thread after its share of answers and says ``DONE`` on stderr; we block on that pipe
    and then interrupt wrk's main thread (which otherwise sleeps out ``-d``). An earlier version polled every
    instance's /metrics every 50 ms with a fresh httpx client each time: that loop took ~40 % of one core (httpx
    builds an SSL context per client) plus the scrapes in the instances, on the same two cores as the system under
    test, and lowered every mode's figure.
    """
    per = total // len(PORTS)
    conns = [connections // len(PORTS) + (1 if i < connections % len(PORTS) else 0) for i in range(len(PORTS))]
    script = str(ROOT / "sums_wrk.lua")
    started = time.perf_counter()
    runs = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{c}", "-d600s", "--timeout", "10s", "-s", script, f"http://127.0.0.1:{port}"],
            env={**os.environ, "SUMS_TAG": f"{tag}{i}", "SUMS_REQUESTS": str(per)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (port, c) in enumerate(zip(PORTS, conns, strict=True))
    ]
    finished = [0.0] * len(PORTS)
    errors = [""] * len(PORTS)

    def wait_done(i: int) -> None:
        run = runs[i]
        assert run.stderr is not None
        for line in run.stderr:
            if line.strip() == "DONE":
                break
            errors[i] += line
        finished[i] = time.perf_counter()
        run.send_signal(signal.SIGINT)
        errors[i] += run.stderr.read()

    waiters = [threading.Thread(target=wait_done, args=(i,)) for i in range(len(PORTS))]
    for waiter in waiters:
        waiter.start()
    outputs = []
    for run in runs:  # stdout here, stderr in the waiters (communicate() would read both and swallow DONE)
        assert run.stdout is not None
        outputs.append(run.stdout.read())
        run.wait()
    for waiter in waiters:
        waiter.join()
    elapsed = max(finished) - started
    results = []
    for output, error in zip(outputs, errors, strict=True):
        match = RESULT.search(output)
        if not match:
            raise RuntimeError(f"wrk printed no result:\n{output}\n{error}")
        results.append(json.loads(match[1]))
    return results, elapsed


async def check_batched(settings: InfraSettings) -> dict[str, Any]:
    conn = await mysql_connect(settings)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT total FROM sum_total WHERE id = 1")
            (total,) = await cur.fetchone()
            await cur.execute("SELECT ikey FROM idempotency_keys")
            keys = [bytes(r[0]).decode() for r in await cur.fetchall()]
    finally:
        conn.close()
    expected = sum(key_number(k) for k in keys)
    return {"keys_applied": len(keys), "sum": int(total), "expected": expected, "exactly_once": int(total) == expected}


async def check_reference(settings: InfraSettings) -> dict[str, Any]:
    conn = await mysql_connect(settings)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT total FROM sum_total WHERE id = 1")
            (total,) = await cur.fetchone()
    finally:
        conn.close()
    client = redis.Redis.from_url(settings.redis.url())
    prefix = f"{settings.redis.key_prefix}sums:ref:"
    try:
        keys = [k.decode()[len(prefix) :] for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    finally:
        client.close()
    expected = sum(key_number(k) for k in keys)
    return {"keys_applied": len(keys), "sum": int(total), "expected": expected, "exactly_once": int(total) == expected}


async def bench_service(mode: str, total: int, connections: int) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    settings = await fresh_settings(f"{mode[:3]}_{tag}")
    procs = start_instances(settings, mode)
    sampler = RssSampler([p.pid for p in procs])
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    try:
        results, elapsed = run_wrk(total, connections, f"{mode[:1]}{tag}-")
    finally:
        sampler.stop.set()
        thread.join()
        stop_instances(procs)
    check = await (check_batched(settings) if mode == "batched" else check_reference(settings))
    await drop_database(settings)
    answered = sum(r["requests"] for r in results)
    return {
        "mode": mode,
        "instances": len(PORTS),
        "connections": connections,
        "requests": answered,
        "seconds": round(elapsed, 2),
        "req_per_s": round(answered / elapsed, 1),
        "p50_ms": round(max(r["p50_us"] for r in results) / 1000, 2),
        "p99_ms": round(max(r["p99_us"] for r in results) / 1000, 2),
        "max_ms": round(max(r["max_us"] for r in results) / 1000, 2),
        "status_200": sum(r["ok"] for r in results),
        "replayed": sum(r["replayed"] for r in results),
        "status_409": sum(r["busy_409"] for r in results),
        "status_other": sum(r["other"] for r in results),
        "socket_errors": sum(r["socket_errors"] for r in results),
        "peak_rss_worker_mib": [mib(n) for n in sampler.peak_worker],
        "peak_rss_tree_mib": [mib(n) for n in sampler.peak_tree],
        **check,
    }


async def raw_loop(clients: int, seconds: float, *, with_key: bool) -> dict[str, Any]:
    """One request per transaction, the obvious design: INSERT key, UPDATE hot row, SELECT, COMMIT."""
    tag = secrets.token_hex(3)
    settings = await fresh_settings(f"raw_{tag}")
    conns = [await mysql_connect(settings) for _ in range(clients)]
    for conn in conns:
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(i: int, conn: Any) -> None:
        nonlocal done
        n = 0
        async with conn.cursor() as cur:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                n += 1
                if with_key:
                    await cur.execute(
                        "INSERT INTO idempotency_keys VALUES (%s, %s, '{}', UTC_TIMESTAMP(6), "
                        "UTC_TIMESTAMP(6) + INTERVAL 86400 SECOND)",
                        (f"raw{i}-{n}".encode(), "f" * 64),
                    )
                await cur.execute("UPDATE sum_total SET total = total + 1 WHERE id = 1")
                if with_key:
                    await cur.execute("SELECT total FROM sum_total WHERE id = 1")
                    await cur.fetchone()
                await conn.commit()
                latencies.append(time.perf_counter() - began)
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    await drop_database(settings)
    latencies.sort()
    return {
        "mode": "raw-loop" if with_key else "update-commit-only",
        "clients": clients,
        "transactions": done,
        "seconds": round(elapsed, 2),
        "tx_per_s": round(done / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "## sums",
        "",
        f"Measured {report['measured_at']} on {report['machine']} (one run; this machine class is noisy).",
        f"Load: {report['requests']} requests, {report['connections']} connections over 3 instances, "
        "90 % new keys / 10 % repeats of recent keys; wrk (one process per instance).",
        "",
        "| mode | req/s | p50 ms | p99 ms | 200 | replayed | 409 | other | peak RSS/instance MiB (worker; tree) "
        "| exactly-once |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["services"]:
        rss = f"{max(r['peak_rss_worker_mib'])}; {max(r['peak_rss_tree_mib'])}"
        lines.append(
            f"| {r['mode']} | {r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['status_200']} | {r['replayed']} "
            f"| {r['status_409']} | {r['status_other']} | {rss} | {r['exactly_once']} ({r['sum']} vs {r['expected']}) |"
        )
    lines += [
        "",
        "| SQL loop (16 clients, one request per transaction) | tx/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for r in report["loops"]:
        lines.append(f"| {r['mode']} | {r['tx_per_s']} | {r['p50_ms']} | {r['p99_ms']} |")
    lines += [
        "",
        "p50/p99 are the worst of the three wrk processes' figures (percentiles of separate runs cannot be merged).",
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--loop-seconds", type=float, default=15)
    parser.add_argument("--modes", default="batched,reference")
    args = parser.parse_args()
    services = []
    for mode in args.modes.split(","):
        print(f"sums bench: {mode} ...", flush=True)
        services.append(await bench_service(mode, args.requests, args.connections))
        print(json.dumps(services[-1]), flush=True)
    loops = []
    for with_key in (True, False):
        print(f"sums bench: raw loop (keys={with_key}) ...", flush=True)
        loops.append(await raw_loop(16, args.loop_seconds, with_key=with_key))
        print(json.dumps(loops[-1]), flush=True)
    report = {
        "service": "sums",
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {mib(psutil.virtual_memory().total)} MiB",
        "requests": args.requests,
        "connections": args.connections,
        "services": services,
        "loops": loops,
    }
    print(save_results("sums", report, markdown))


if __name__ == "__main__":
    asyncio.run(main())
