"""The drill's script: load on every chosen pipeline, faults one after another, then each pipeline's checks.

The fault injector and the checks are separate: the load and the checks talk to the system over HTTP and read what
its processes print, as a user would; only the injector needs to be on the machine that runs it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from orderly.drill.faults import FaultRecord, LocalFaults, rounds
from orderly.drill.ingest import Ingest
from orderly.drill.items import Items
from orderly.drill.loms import Loms
from orderly.drill.pipeline import Pipeline, Target, Verdict
from orderly.drill.sums import Sums
from orderly.stack.manager import Stack

PIPELINES: tuple[type[Pipeline], ...] = (Ingest, Sums, Items, Loms)
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Options:
    pipelines: Sequence[str] = tuple(p.name for p in PIPELINES)
    faults: bool = True  # False: load and checks only (a deployment the drill cannot inject faults into)
    clients: int = 3  # concurrent clients per pipeline
    rate: float = 10.0  # requests a second per client, at most
    settle: float = 2.0  # seconds of load before the first fault, between two faults and after the last
    duration: float = 30.0  # seconds of load when there are no faults
    check_within: float = 90.0  # how long a check waits for the output to catch up


@dataclass
class Report:
    pipeline: Pipeline
    verdict: Verdict
    faults: list[FaultRecord] = field(default_factory=list)


async def exercise(target: Target, stack: Stack, options: Options, *, say: Callable[[str], None]) -> list[Report]:
    tag = secrets.token_hex(4)
    pipelines = [cls(target, tag=tag) for cls in PIPELINES if cls.name in options.pipelines]
    injector = LocalFaults(stack, target) if options.faults else None
    limits = httpx.Limits(max_connections=4 * options.clients * len(pipelines))
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        for pipeline in pipelines:
            await pipeline.prepare(http)
        unable = injector.begin() if injector else None
        plan = injector.plan(pipelines) if injector and not unable else []
        names = ", ".join(p.name for p in pipelines)
        say(f"drill {tag}: {names}; {len(plan)} faults planned in {len(rounds(plan))} rounds")
        stop = asyncio.Event()
        began = time.monotonic()
        loads = [asyncio.create_task(p.load(http, stop, clients=options.clients, rate=options.rate)) for p in pipelines]
        records: list[FaultRecord] = []
        try:
            await asyncio.sleep(options.settle)
            for group in rounds(plan):
                assert injector is not None
                for record in await asyncio.gather(*(injector.inject(fault) for fault in group)):
                    mark = "ok  " if record.recovered else "FAIL"
                    say(f"  {time.monotonic() - began:5.0f} s  {mark} {record.title}: {record.detail}")
                    records.append(record)
                await asyncio.sleep(options.settle)
            if injector is None:
                await asyncio.sleep(options.duration)
        finally:
            stop.set()
            await asyncio.gather(*loads)
        say(f"load stopped after {time.monotonic() - began:.0f} s; checking")
        began = time.monotonic()
        reports = [Report(p, Verdict(p.name), [r for r in records if p.name in r.pipelines]) for p in pipelines]
        await asyncio.gather(*(_check(http, report, options) for report in reports))
    for report in reports:
        _judge(report, injector, unable)
    say(f"checks took {time.monotonic() - began:.0f} s")
    return reports


async def _check(http: httpx.AsyncClient, report: Report, options: Options) -> None:
    """The pipeline's own checks; one that crashes is a FAIL with the error as its evidence, never a traceback."""
    try:
        await report.pipeline.check(http, report.verdict, within=options.check_within)
    except Exception as error:
        report.verdict.check(False, f"the check crashed: {type(error).__name__}: {error}")


def _judge(report: Report, injector: LocalFaults | None, unable: str | None) -> None:
    verdict, tally = report.verdict, report.pipeline.tally
    verdict.check(tally.server_errors == 0, f"{tally.server_errors} answers 5xx other than 503")
    if injector is None:
        verdict.note("no faults injected (--faults none): load and checks only")
        return
    if unable:
        verdict.check(False, f"faults not injected: {unable}")
        return
    for record in report.faults:
        verdict.check(record.injected and record.recovered, f"{record.title}: {record.detail}")
    unplanned = injector.unplanned_restarts(report.pipeline.processes(report.pipeline.target.specs))
    crashed = ", ".join(f"{name} x {n}" for name, n in sorted(unplanned.items()))
    verdict.check(not unplanned, f"processes that exited on their own and were restarted: {crashed or 'none'}")


def summary(report: Report) -> str:
    """The counts of one pipeline: requests by outcome, faults injected, how long each killed process took to return."""
    injected = [r for r in report.faults if r.injected]
    kills = [r for r in injected if r.title.startswith("kill") and r.back_after is not None]
    back = ", ".join(f"{r.title.removeprefix('kill -9 ')} {r.back_after:.1f} s" for r in kills)
    return f"{report.pipeline.tally.line()}; faults injected {len(injected)}" + (
        f"; killed, back after: {back}" if back else ""
    )
