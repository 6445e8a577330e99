"""What `orderly up` runs for ingest: migrations, the API, two workers (active + hot standby), the daemon."""

from __future__ import annotations

from orderly.ingest.settings import API_PORT
from orderly.platform.processes import ProcessSpec, api_process, background_process


def processes() -> list[ProcessSpec]:
    return [
        ProcessSpec(name="ingest-migrate", args=("ingest", "migrate"), init=True),
        api_process("ingest-api", "ingest", "api", port=API_PORT),
        background_process("ingest-worker-1", "ingest", "worker"),
        background_process("ingest-worker-2", "ingest", "worker"),
        background_process("ingest-daemon", "ingest", "daemon"),
    ]
