from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.plumbing import Processes


@pytest.fixture
def processes() -> Iterator[Processes]:
    """The shared fixture, plus closing each child's stdout/stderr pipes (left open otherwise: ResourceWarning)."""
    spawned = Processes()
    yield spawned
    spawned.stop_all()
    for process in spawned.spawned:
        for stream in (process.proc.stdout, process.proc.stderr):
            if stream is not None:
                stream.close()
