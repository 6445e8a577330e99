"""Stopping a server whose parent never reaps it (the `orderly up` that started the stack) takes no longer than it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from orderly.platform.settings import InfraSettings
from orderly.stack.base import Server, StackContext


class Sleeper(Server):
    """A stand-in server: a process that exits on SIGTERM."""

    name = "sleeper"
    package = "python"

    @property
    def ports(self) -> dict[str, int]:
        return {"none": 1}

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    def is_ready(self) -> bool:
        return True

    def version(self) -> str:
        return "0"


def test_a_stopped_server_left_as_a_zombie_by_its_parent_counts_as_stopped_at_once(tmp_path: Path) -> None:
    server = Sleeper(StackContext(root=tmp_path, settings=InfraSettings(), run_as=None))
    server.mkdir(server.dir)
    # A parent that starts the server and never reaps it, as `orderly up` with the stack's servers it started.
    forgetful = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen({server.command()!r})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", forgetful], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server.pid_path.write_text(parent.stdout.readline())
        began = time.monotonic()
        assert server.stop()
        assert time.monotonic() - began < Sleeper.stop_timeout / 3, "stop waited for a zombie to exit"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
