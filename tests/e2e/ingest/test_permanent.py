"""A permanent fault stops a background process at once, with one line that names the fix (no traceback)."""

from __future__ import annotations

import json

import pytest

from orderly.platform.lifecycle import EXIT_PERMANENT
from tests.plumbing import Namespace, Processes, infra_env


@pytest.mark.parametrize("process", ["worker", "daemon"])
async def test_a_missing_database_stops_the_process_with_one_line_naming_the_fix(
    namespace: Namespace, processes: Processes, process: str
) -> None:
    base = await namespace.settings(f"nodb-{process}")
    missing = f"{namespace.prefix}_never_created"
    settings = base.model_copy(update={"postgres": base.postgres.model_copy(update={"database": missing})})
    spawned = processes.start("ingest", process, env=infra_env(settings))
    assert spawned.proc.wait(60) == EXIT_PERMANENT
    spawned.stop()  # collects what is left of its output
    records = [json.loads(line) for line in spawned.errors if line.startswith("{")]
    assert [r for r in records if r["level"] in ("ERROR", "CRITICAL")] == [
        next(r for r in records if r["level"] == "CRITICAL")
    ]
    assert records[-1]["message"] == f'database "{missing}" does not exist: run `orderly init`'
    assert not any("Traceback" in line for line in spawned.errors)
    assert all(line.startswith("{") for line in spawned.errors), spawned.errors
