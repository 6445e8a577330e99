"""What `orderly up` runs for loms and notifier."""

from __future__ import annotations

from orderly.loms.settings import API_PORT
from orderly.platform.processes import ProcessSpec, api_process, background_process


def processes() -> list[ProcessSpec]:
    return [
        ProcessSpec("loms-init", ("loms", "init"), init=True),
        api_process("loms-api", "loms", "api", port=API_PORT),
        background_process("loms-relay", "loms", "relay"),
        *(background_process(f"notifier-{n}", "notifier", "--instance", f"notifier-{n}") for n in (1, 2, 3)),
    ]
