"""What `orderly up` runs for the items service."""

from __future__ import annotations

from orderly.items.settings import ITEMS_HTTP_PORT
from orderly.platform.processes import ProcessSpec


def processes() -> list[ProcessSpec]:
    return [
        ProcessSpec(name="items-migrate", args=("items", "migrate"), init=True),
        ProcessSpec(name="items-api", args=("items", "api", "--port", str(ITEMS_HTTP_PORT)), http_port=ITEMS_HTTP_PORT),
        ProcessSpec(name="items-relay", args=("items", "relay")),
        ProcessSpec(name="items-audit", args=("items", "audit")),
    ]
