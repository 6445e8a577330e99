"""CPU per request of every process in the items 90/10 mix, A and B in turn: where a mix's time goes, per side.

    python -m bench.mix_cpu --base <rev> [--head <rev>] [--rounds N] [--probe]

Each run starts one revision's items API, relay and audit (from its worktree, as `bench.ab` makes them) on a fresh
database, runs the bench's 90/10 list/update mix for 10 s, and reads the CPU time of each process (children
included: granian's worker, PostgreSQL's backends) from `/proc` before and after: API, relay, audit, PostgreSQL,
Redis, NATS, ClickHouse. ``--probe`` runs the bench's change-log lag probe meanwhile (a write, then `/logs` polled
until it shows), as `bench.items` does. Sides alternate A B B A ...; the figures print as they come.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import items as items_bench
from bench.ab import checkout, revisions_parser, share_harness
from orderly.stack.manager import Stack

API_PORT = 18177
SERVERS = ["postgres", "redis", "nats", "clickhouse"]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and all its descendants (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0.0


def one_run(tree: Path, servers: dict[str, int], mix: str, *, probe: bool) -> str:
    settings = items_bench.bench_settings(secrets.token_hex(3))
    asyncio.run(items_bench.migrate(settings))
    env = {**os.environ, **items_bench.env_for(settings)}
    python = str(tree / ".venv" / "bin" / "python")
    commands = {
        "api": ["items", "api", "--port", str(API_PORT)],
        "relay": ["items", "relay"],
        "audit": ["items", "audit"],
    }
    procs = {
        name: subprocess.Popen(
            [python, "-m", "orderly", *args], cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for name, args in commands.items()
    }
    try:
        items_bench.wait_ready(API_PORT)
        base = f"http://127.0.0.1:{API_PORT}"
        asyncio.run(items_bench.seed(base))
        pids = {**{name: p.pid for name, p in procs.items()}, **servers}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        output = asyncio.run(_load(base, mix, probe=probe))
        elapsed = time.monotonic() - started
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        asyncio.run(items_bench.drop(settings))
    found = re.search(r"(\d+) requests in", output)
    if found is None:
        raise RuntimeError(f"wrk said: {output}")
    requests = int(found[1])
    parts = ", ".join(f"{name} {seconds / requests * 1e6:.0f}" for name, seconds in used.items())
    return (
        f"{requests / elapsed:,.0f} req/s; CPU µs per request: {parts}; all {sum(used.values()) / requests * 1e6:.0f}"
    )


async def _load(base: str, mix: str, *, probe: bool) -> str:
    stop = asyncio.Event()
    lag = asyncio.create_task(items_bench.lag_probe(base, stop)) if probe else None
    done = await asyncio.to_thread(
        subprocess.run,
        ["wrk", "-t2", "-c64", "-d10s", "-s", mix, f"{base}/items/list"],
        capture_output=True,
        text=True,
        check=True,
    )
    stop.set()
    if lag is not None:
        await lag
    return done.stdout


def main() -> int:
    parser = revisions_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 21), metavar="N", help="runs per side")
    parser.add_argument("--probe", action="store_true", help="run the change-log lag probe during the mix")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "orderly", "stack", "up", *SERVERS], check=True)
    _, a_tree = checkout(args.base)
    _, b_tree = checkout(args.head)
    share_harness(b_tree, a_tree)
    found = {server.name: server.pid() for server in Stack().servers(SERVERS)}
    servers = {name: pid for name, pid in found.items() if pid is not None}
    if len(servers) < len(found):
        raise RuntimeError(f"not running: {', '.join(sorted(set(found) - set(servers)))}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as mix:
        mix.write(items_bench.MIX_LUA)
        mix.flush()
        for index in range(2 * args.rounds):
            side = "AB"[index % 2] if (index // 2) % 2 == 0 else "BA"[index % 2]
            tree = a_tree if side == "A" else b_tree
            print(f"{side}: {one_run(tree, servers, mix.name, probe=args.probe)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
