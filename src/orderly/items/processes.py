"""What `orderly up` runs for the items service."""

from __future__ import annotations

from orderly.items.settings import ITEMS_HTTP_PORT
from orderly.platform.processes import ProcessSpec, api_process, background_process


def processes() -> list[ProcessSpec]:
    return [
        ProcessSpec(name="items-migrate", args=("items", "migrate"), init=True),
        api_process("items-api", "items", "api", port=ITEMS_HTTP_PORT),
        background_process("items-relay", "items", "relay"),
        background_process("items-audit", "items", "audit"),
    ]
