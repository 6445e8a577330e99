"""What `orderly up` runs for ingest: migrations, the API, two workers (active + hot standby), the daemon."""

from __future__ import annotations

from orderly.ingest.settings import API_PORT
from orderly.platform.processes import ProcessSpec


def processes() -> list[ProcessSpec]:
    return [
        ProcessSpec(name="ingest-migrate", args=("ingest", "migrate"), init=True),
        ProcessSpec(name="ingest-api", args=("ingest", "api", "--port", str(API_PORT)), http_port=API_PORT),
        ProcessSpec(name="ingest-worker-1", args=("ingest", "worker")),
        ProcessSpec(name="ingest-worker-2", args=("ingest", "worker")),
        ProcessSpec(name="ingest-daemon", args=("ingest", "daemon")),
    ]
