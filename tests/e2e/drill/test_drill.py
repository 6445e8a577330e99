"""`orderly drill` as a person runs it, against a private copy of the whole system under `orderly up`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.plumbing import RunningSystem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the fixture first brings the system up


def test_the_drill_passes_every_pipeline_while_each_process_is_killed_and_each_server_restarted(
    running_system: RunningSystem,
) -> None:
    """Every kind of process killed with -9 and every server restarted under load; each promise holds afterwards."""
    done = subprocess.run(
        [sys.executable, "-m", "orderly", "drill", "--settle", "1", "--clients", "2"],
        env=running_system.env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = done.stdout
    tail = "\n".join(running_system.lines[-80:])
    assert done.returncode == 0, f"{report}\n{done.stderr[-3000:]}\n--- orderly up ---\n{tail}"
    assert "faults planned" in report, report
    assert " 0 faults planned" not in report, report
    for pipeline in ("ingest", "sums", "items", "loms"):
        assert f"PASS {pipeline}:" in report, report
