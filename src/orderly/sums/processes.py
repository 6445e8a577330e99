"""What `orderly up` runs for sums: the migration step, then three API instances."""

from __future__ import annotations

from orderly.platform.processes import ProcessSpec, api_process
from orderly.sums.settings import API_PORTS


def processes() -> list[ProcessSpec]:
    init = ProcessSpec(name="sums-migrate", args=("sums", "migrate"), init=True)
    apis = [api_process(f"sums-{i}", "sums", "api", port=port) for i, port in enumerate(API_PORTS, start=1)]
    return [init, *apis]
