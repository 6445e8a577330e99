"""`orderly demo` attaches to a running system wherever its ports are (``ORDERLY_UP__PORT_OFFSET`` included) and every
promise, the STOMP entry's among them, is PASS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.plumbing import RunningSystem

pytestmark = pytest.mark.slow


def test_demo_attaches_to_a_system_on_moved_ports_and_every_promise_passes(running_system: RunningSystem) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orderly", "demo"],
        env=running_system.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "the system is not running" not in output, f"demo started its own system:\n{output}"
    assert done.returncode == 0, output
    verdicts = [line for line in output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdicts) == 5, output
    assert all(line.startswith("PASS") for line in verdicts), output
    assert any("STOMP" in line for line in verdicts), output
