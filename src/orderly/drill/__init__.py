"""`orderly drill`: a bounded, scripted fault run against the running system, then each pipeline's promise checked.

Load flows on every pipeline (careful clients on loopback) while each kind of process is killed with -9 (the active
one and a standby where there are both) and each server a pipeline uses is restarted. Afterwards each pipeline's
promise is checked, and PASS or FAIL is printed per pipeline with the counts that back it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console

from orderly.attach import SystemNotReadyError, attached
from orderly.drill.pipeline import Target
from orderly.drill.run import PIPELINES, Options, exercise, summary

__all__ = ["PIPELINES", "Options", "drill"]

console = Console(highlight=False, soft_wrap=True)


def drill(options: Options, *, output: Path | None = None) -> int:
    """Run the drill against the running system (started when needed); 0 when every pipeline passed.

    ``output`` is the folder with each process's output as ``<process>.log``; by default where `orderly up` keeps it.
    """
    began = time.monotonic()
    try:
        with attached(announce=console.print) as system:
            target = Target(system.specs, output or system.output)
            reports = asyncio.run(exercise(target, system.stack, options, say=console.print))
    except SystemNotReadyError as error:
        console.print(f"[red]the system did not get ready: {error} (see .stack/run/up.log)[/]")
        return 1
    for report in reports:
        ok = report.verdict.ok
        console.print(
            f"[bold {'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] {report.pipeline.name}: {summary(report)}"
        )
        for line in report.verdict.evidence:
            console.print(f"      {line}")
    passed = sum(r.verdict.ok for r in reports)
    console.print(f"{passed}/{len(reports)} pipelines passed in {time.monotonic() - began:.0f} s")
    return 0 if passed == len(reports) else 1
