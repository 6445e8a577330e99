"""What the notifier does with one event: check its shape and render the stdout line. Pure, no I/O."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from orderly.loms.domain import OrderStatus

STATUSES = frozenset(s.value for s in OrderStatus)


class BadEventError(Exception):
    """The message is not an order event this notifier understands."""


def parse_event(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise BadEventError("empty message")
    try:
        event = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadEventError(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise BadEventError("not a JSON object")
    if not isinstance(event.get("order_id"), int) or isinstance(event.get("order_id"), bool):
        raise BadEventError("order_id missing or not an integer")
    if event.get("status") not in STATUSES:
        raise BadEventError(f"unknown status {event.get('status')!r}")
    occurred_at = event.get("occurred_at")
    if not isinstance(occurred_at, str):
        raise BadEventError("occurred_at missing")
    try:
        datetime.fromisoformat(occurred_at)
    except ValueError:
        raise BadEventError(f"occurred_at is not RFC 3339: {occurred_at!r}") from None
    return event


def render_line(event: dict[str, Any], *, partition: int, offset: int, instance: str, replayed: bool = False) -> str:
    """One JSON line; ``"replayed": true`` marks an event sent again from the DLQ (it may follow later events)."""
    line = {
        "order_id": event["order_id"],
        "status": event["status"],
        "occurred_at": event["occurred_at"],
        "event_id": event.get("event_id"),
        "partition": partition,
        "offset": offset,
        "instance": instance,
    }
    if replayed:
        line["replayed"] = True
    return json.dumps(line, separators=(",", ":"))
