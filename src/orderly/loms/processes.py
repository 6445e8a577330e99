"""What `orderly up` runs for loms and notifier."""

from __future__ import annotations

from orderly.loms.settings import API_PORT
from orderly.platform.processes import ProcessSpec


def processes() -> list[ProcessSpec]:
    return [
        ProcessSpec("loms-init", ("loms", "init"), init=True),
        ProcessSpec("loms-api", ("loms", "api", "--port", str(API_PORT)), http_port=API_PORT),
        ProcessSpec("loms-relay", ("loms", "relay")),
        *(ProcessSpec(f"notifier-{n}", ("notifier", "--instance", f"notifier-{n}")) for n in (1, 2, 3)),
    ]
