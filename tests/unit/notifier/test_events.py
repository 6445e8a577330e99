from __future__ import annotations

import json

import pytest

from orderly.loms.domain import Order, OrderStatus, order_event
from orderly.notifier.events import BadEventError, parse_event, render_line


def test_a_loms_event_renders_as_one_line_with_the_promised_fields() -> None:
    event = order_event(Order(3, 9, OrderStatus.NEW), OrderStatus.AWAITING_PAYMENT)
    line = render_line(parse_event(json.dumps(event).encode()), partition=1, offset=17, instance="n2")
    assert "\n" not in line
    assert json.loads(line) == {
        "order_id": 3,
        "status": "awaiting payment",
        "occurred_at": event["occurred_at"],
        "event_id": event["event_id"],
        "partition": 1,
        "offset": 17,
        "instance": "n2",
    }


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'{"status": "new", "occurred_at": "2026-01-01T00:00:00Z"}',
        b'{"order_id": "1", "status": "new", "occurred_at": "2026-01-01T00:00:00Z"}',
        b'{"order_id": 1, "status": "lost", "occurred_at": "2026-01-01T00:00:00Z"}',
        b'{"order_id": 1, "status": "new", "occurred_at": "yesterday"}',
    ],
)
def test_a_message_that_is_not_an_order_event_is_rejected(value: bytes | None) -> None:
    with pytest.raises(BadEventError):
        parse_event(value)


def test_an_event_replayed_from_the_dlq_is_marked_on_its_line() -> None:
    event = order_event(Order(3, 9, OrderStatus.NEW), OrderStatus.PAYED)
    line = json.loads(render_line(event, partition=0, offset=5, instance="n1", replayed=True))
    assert line["replayed"] is True
    assert line["event_id"] == event["event_id"]
    assert "replayed" not in json.loads(render_line(event, partition=0, offset=5, instance="n1"))
