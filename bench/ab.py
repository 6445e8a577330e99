"""A/B in one run: the same `make bench-<service>` targets on two git revisions, back to back, on one stack.

    python -m bench.ab --base <rev> [--head <rev>] [--only ingest,sums] [--rounds N]

Each revision gets a detached worktree with its own environment under ``.stack/ab/`` (never committed). Both are
measured by one harness, B's: its ``bench/`` files are copied over A's before the first run, so that a fix to a
benchmark (or a defect in an old one) cannot pass for a change in the code. The targets run alternately (A then B
for one service, B then A for the next, swapped each round) so that drift of a noisy machine does not always favour
one side. The figures compared are the throughputs that docs/benchmarks.md reports, and the ratios of one of ours
to a ceiling measured beside it in the same run (the raw publish, the hello-world app, the relay's slower raw half),
which take some of the machine's drift out. A figure of B below 95 % of A's is flagged. Ratios of two of our own
paths (batched drain / batch 1, cached / uncached list, batched / reference sums) are not compared: both figures
are, and such a ratio falls when its denominator gets faster. Results: bench/results/ab.json and
bench/results/ab.md (rendered into docs/benchmarks.md by ``bench/render.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOLERANCE = 0.95  # B may fall at most 5 % below A before it is flagged

Figures = dict[str, float]


def _ingest(r: dict[str, Any]) -> Figures:
    drain = {d["batch_size"]: d["drain_req_per_s"] for d in r["drain"]}
    out = {f"API accepted, {a['api_workers']} process(es), req/s": a["accepted_req_per_s"] for a in r["api"]}
    out |= {
        "raw confirmed publish, msg/s": r["raw"]["publish_msg_per_s"],
        "worker drain, batch 500, req/s": drain[500],
        "worker drain, batch 1, req/s": drain[1],
        "ratio: API (1 process) / raw publish": r["api"][0]["accepted_req_per_s"] / r["raw"]["publish_msg_per_s"],
        "ratio: batched drain / raw consume": drain[500] / r["raw"]["consume_msg_per_s"],
    }
    return out


def _sums(r: dict[str, Any]) -> Figures:
    modes = {s["mode"]: s["req_per_s"] for s in r["services"]}
    out = {f"{mode}, req/s": rate for mode, rate in modes.items()}
    out |= {f"SQL only: {loop['mode']}, tx/s": loop["tx_per_s"] for loop in r["loops"]}
    return out


def _items(r: dict[str, Any]) -> Figures:
    out = {
        "GET /items/list cached, req/s": r["list_cached"]["rps"],
        "GET /items/list uncached, req/s": r["list_uncached"]["rps"],
        "90 % list / 10 % update, req/s": r["mix_90_10"]["rps"],
        "hello-world ceiling, req/s": r["hello_world"]["rps"],
        "ratio: cached / hello-world": r["list_cached"]["rps"] / r["hello_world"]["rps"],
    }
    if "write_load" in r:
        out["writes only, req/s"] = r["write_load"]["rps"]
    return out


def _loms(r: dict[str, Any]) -> Figures:
    relay = r["relay"]["events_per_s"]
    slower_half = min(r["raw_pg_claim_delete"]["events_per_s"], r["raw_producer"]["events_per_s"])
    return {
        "relay batched, events/s": relay,
        "relay row at a time, events/s": r["relay_row_at_a_time"]["events_per_s"],
        "ratio: relay / slower raw half": relay / slower_half,
        "orders achieved per s (500 offered)": r["latency"]["rate_achieved_per_s"],
    }


FIGURES: dict[str, Callable[[dict[str, Any]], Figures]] = {
    "ingest": _ingest,
    "sums": _sums,
    "items": _items,
    "loms": _loms,
}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def checkout(rev: str) -> tuple[str, Path]:
    """A detached worktree of ``rev`` with its own synced environment; reused when it already exists."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = ROOT / ".stack" / "ab" / sha[:12]
    if not (tree / ".git").exists():
        _git("worktree", "add", "--detach", str(tree), sha)
    else:  # reused: drop a harness copied in by an earlier run (see share_harness)
        subprocess.run(["git", "checkout", "--force", "--quiet", sha, "--", "bench"], cwd=tree, check=True)
        subprocess.run(["git", "clean", "-fdq", "--", "bench"], cwd=tree, check=True)
    subprocess.run(["uv", "sync", "--frozen", "--quiet"], cwd=tree, check=True)
    return sha, tree


def share_harness(source: Path, target: Path) -> None:
    """Give ``target`` the benchmark code of ``source`` (scripts, wrk Lua, make fragments; not the results)."""
    for path in (source / "bench").iterdir():
        if path.is_file() and path.suffix in {".py", ".lua", ".mk"}:
            shutil.copy2(path, target / "bench" / path.name)


def run_target(tree: Path, service: str, stack_dir: str) -> Figures:
    env = {**os.environ, "ORDERLY_STACK_DIR": stack_dir, "BENCH_INGEST_ENTRIES": "0"}
    started = time.monotonic()
    subprocess.run(["make", "--no-print-directory", f"bench-{service}"], cwd=tree, env=env, check=True)
    print(f"ab: bench-{service} in {tree.name} took {time.monotonic() - started:.0f} s", flush=True)
    return FIGURES[service](json.loads((tree / "bench" / "results" / f"{service}.json").read_text()))


def median_of(runs: list[Figures]) -> Figures:
    """Each figure's median over the rounds (a figure missing from any round is dropped)."""
    names = set(runs[0]).intersection(*runs[1:])
    return {name: statistics.median(run[name] for run in runs) for name in runs[0] if name in names}


def render(base: str, head: str, results: dict[str, dict[str, Figures]], rounds: int) -> str:
    lines = [
        f"A = `{base[:12]}`, B = `{head[:12]}`; one run of `python -m bench.ab`, services alternating A/B order;"
        f" {rounds} round(s), medians.",
        f"Measured {datetime.now(UTC).isoformat(timespec='seconds')}; flagged when B < {TOLERANCE:.0%} of A.",
        "",
        "| service | figure | A | B | B / A |",
        "|---|---|---:|---:|---:|",
    ]
    for service, sides in results.items():
        for name, a in sides["A"].items():
            b = sides["B"].get(name)
            if b is None:
                continue
            change = b / a if a else float("nan")
            flag = " ⚠" if change < TOLERANCE else ""
            digits = 2 if name.startswith("ratio") else 0
            lines.append(f"| {service} | {name} | {a:,.{digits}f} | {b:,.{digits}f} | {change:.3f}{flag} |")
    return "\n".join(lines) + "\n"


def revisions_parser(description: str | None) -> argparse.ArgumentParser:
    """The command line of an A/B tool: ``--base`` (A) and ``--head`` (B); the tool adds its own options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="revision A (e.g. the commit before a change)")
    parser.add_argument("--head", default="HEAD", help="revision B (default: HEAD)")
    return parser


def main() -> int:
    parser = revisions_parser(__doc__)
    parser.add_argument("--only", default=",".join(FIGURES), help="comma-separated services")
    parser.add_argument("--rounds", type=int, default=1, choices=range(1, 10), help="A/B pairs per service (median)")
    args = parser.parse_args()
    services = [s for s in args.only.split(",") if s]
    unknown = set(services) - set(FIGURES)
    if unknown:
        parser.error(f"--only: unknown service(s) {sorted(unknown)}; known: {sorted(FIGURES)}")

    stack_dir = os.environ.get("ORDERLY_STACK_DIR", str(ROOT / ".stack"))
    subprocess.run([sys.executable, "-m", "orderly", "stack", "up"], check=True)
    base, a_tree = checkout(args.base)
    head, b_tree = checkout(args.head)
    share_harness(b_tree, a_tree)
    rounds: dict[str, dict[str, list[Figures]]] = {service: {"A": [], "B": []} for service in services}
    for round_index in range(args.rounds):
        for index, service in enumerate(services):
            order = [("A", a_tree), ("B", b_tree)]
            if (index + round_index) % 2:
                order.reverse()
            for side, tree in order:
                rounds[service][side].append(run_target(tree, service, stack_dir))
    results = {service: {side: median_of(runs) for side, runs in sides.items()} for service, sides in rounds.items()}

    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"base": base, "head": head, "rounds": rounds, "results": results}
    (RESULTS / "ab.json").write_text(json.dumps(record, indent=2) + "\n")
    table = render(base, head, results, args.rounds)
    (RESULTS / "ab.md").write_text(table)
    print(table)
    flagged = [line for line in table.splitlines() if line.endswith("⚠ |")]
    return 1 if flagged else 0


if __name__ == "__main__":
    raise SystemExit(main())
