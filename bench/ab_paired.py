"""Paired A/B of the HTTP hot paths: both revisions' servers up side by side, short wrk bursts alternating A, B, B, A…

    python -m bench.ab_paired --base <rev> [--head <rev>] [--pairs N] [--seconds S]

`make bench-ab` runs the whole bench of one revision, then of the other. On this machine the figures of one and the
same revision drift by ±30 % and more within minutes (its neighbours' load), far more than the 5 % a change may cost,
so two such runs minutes apart cannot tell a 5 % change. Here both revisions serve at the same time (the idle one
costs next to nothing), each burst of A is paired with the burst of B beside it, and a figure is the median over the
pairs of B / A: drift slower than a few seconds falls out of each ratio.

Targets, each served from its revision's worktree (as `bench.ab` makes them, with B's harness):
- ``hello``: the hello-world app on the platform's HTTP stack (``create_app``, the Edge, FastAPI, granian);
- ``ingest``: ``GET /ingest`` of the ingest API with one process, publishing to RabbitMQ with confirms;
- ``items-cached`` and ``items-writes``: the items API's cached ``GET /items/list`` and the bench's write mix (one in
  five a create, the rest updates), both APIs on one database and cache, no relay or audit running.

Results: bench/results/ab_paired.json and ab_paired.md (rendered into docs/benchmarks.md by ``bench/render.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import ingest as ingest_bench
from bench import items as items_bench
from bench.ab import RESULTS, TOLERANCE, checkout, revisions_parser, share_harness
from bench.ingest import wait_ready, wrk
from orderly.platform.settings import InfraSettings

PORTS = {"A": 18191, "B": 18192}


@contextmanager
def serving(tree: Path, args: list[str], env: dict[str, str], port: int) -> Iterator[None]:
    """``python -m <args>`` from ``tree``'s own environment, until the block ends."""
    proc = subprocess.Popen(
        [str(tree / ".venv" / "bin" / "python"), "-m", *args],
        cwd=tree,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def paired(urls: dict[str, str], *, pairs: int, seconds: int, script: str | None = None) -> dict[str, Any]:
    """``pairs`` bursts of each side, A and B back to back (order swapped every pair); B / A per pair."""
    rates: dict[str, list[float]] = {"A": [], "B": []}
    for index in range(pairs):
        for side in ("A", "B") if index % 2 == 0 else ("B", "A"):
            result = wrk(urls[side], seconds=seconds, connections=50, script=script)
            if result["non_2xx"]:
                raise RuntimeError(f"{side}: {result['non_2xx']} non-2xx answers from {urls[side]}")
            rates[side].append(result["req_per_s"])
    ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True)]
    return {
        "A_req_per_s": rates["A"],
        "B_req_per_s": rates["B"],
        "ratios": [round(r, 4) for r in ratios],
        "median_ratio": statistics.median(ratios),
    }


def both(trees: dict[str, Path], args: list[str], env: dict[str, str]) -> contextlib.ExitStack:
    """A's and B's server of ``args`` (``{port}`` filled in per side), both ready."""
    with contextlib.ExitStack() as stack:  # A's server is stopped again if B's does not come up
        for side, port in PORTS.items():
            stack.enter_context(serving(trees[side], [a.format(port=port) for a in args], env, port))
        return stack.pop_all()


def urls(path: str) -> dict[str, str]:
    return {side: f"http://127.0.0.1:{port}{path}" for side, port in PORTS.items()}


def measure_hello(trees: dict[str, Path], *, pairs: int, seconds: int) -> dict[str, Any]:
    with both(trees, ["bench.hello_app", "--port", "{port}"], {}):
        return paired(urls("/hello"), pairs=pairs, seconds=seconds)


def measure_ingest(trees: dict[str, Path], *, pairs: int, seconds: int) -> dict[str, Any]:
    infra = InfraSettings()
    settings = asyncio.run(ingest_bench.prepare(infra))
    try:
        args = ["orderly", "ingest", "api", "--port", "{port}", "--workers", "1"]
        with both(trees, args, ingest_bench.env_for(settings)):
            return paired(urls("/ingest?n=7&n=-3&n=42"), pairs=pairs, seconds=seconds)
    finally:
        asyncio.run(ingest_bench.cleanup(infra))


def measure_items(trees: dict[str, Path], *, pairs: int, seconds: int) -> dict[str, dict[str, Any]]:
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
                    "items-cached": paired(urls("/items/list"), pairs=pairs, seconds=seconds),
                    "items-writes": paired(urls("/"), pairs=pairs, seconds=seconds, script=script.name),
                }
    finally:
        asyncio.run(items_bench.drop(settings))


def render(base: str, head: str, results: dict[str, dict[str, Any]], *, pairs: int, seconds: int) -> str:
    lines = [
        f"A = `{base[:12]}`, B = `{head[:12]}`; one run of `python -m bench.ab_paired`: both servers up, {pairs} pairs"
        f" of {seconds} s wrk bursts (A, B / B, A alternating); B / A is the median of the per-pair ratios.",
        f"Measured {datetime.now(UTC).isoformat(timespec='seconds')}; flagged when B < {TOLERANCE:.0%} of A.",
        "",
        "| target | A req/s (median) | B req/s (median) | B / A, median of pairs | pairs' range |",
        "|---|---:|---:|---:|---|",
    ]
    names = {
        "hello": "hello-world, platform HTTP stack",
        "ingest": "ingest `GET /ingest`, 1 process",
        "items-cached": "items `GET /items/list`, cached page",
        "items-writes": "items writes (20 % create, 80 % update)",
    }
    for target, r in results.items():
        flag = " ⚠" if r["median_ratio"] < TOLERANCE else ""
        a, b = statistics.median(r["A_req_per_s"]), statistics.median(r["B_req_per_s"])
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
    args = parser.parse_args()

    subprocess.run([sys.executable, "-m", "orderly", "stack", "up"], check=True)
    base, a_tree = checkout(args.base)
    head, b_tree = checkout(args.head)
    share_harness(b_tree, a_tree)
    trees = {"A": a_tree, "B": b_tree}
    pairs, seconds = args.pairs, args.seconds
    results = {
        "hello": measure_hello(trees, pairs=pairs, seconds=seconds),
        "ingest": measure_ingest(trees, pairs=pairs, seconds=seconds),
        **measure_items(trees, pairs=pairs, seconds=seconds),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"base": base, "head": head, "pairs": args.pairs, "seconds": args.seconds, "results": results}
    (RESULTS / "ab_paired.json").write_text(json.dumps(record, indent=2) + "\n")
    table = render(base, head, results, pairs=args.pairs, seconds=args.seconds)
    (RESULTS / "ab_paired.md").write_text(table)
    print(table)
    return 1 if "⚠" in table else 0


if __name__ == "__main__":
    raise SystemExit(main())
