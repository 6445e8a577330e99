from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from orderly.loms.domain import (
    ALLOWED,
    TERMINAL,
    Item,
    Order,
    OrderStatus,
    Stock,
    TransitionNotAllowedError,
    check_transition,
    merge_items,
    order_event,
    shortage,
)

S = OrderStatus


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.NEW, S.AWAITING_PAYMENT),
        (S.NEW, S.FAILED),
        (S.NEW, S.CANCELLED),
        (S.AWAITING_PAYMENT, S.PAYED),
        (S.AWAITING_PAYMENT, S.CANCELLED),
    ],
)
def test_the_lifecycle_transitions_are_allowed(current: OrderStatus, target: OrderStatus) -> None:
    check_transition(Order(1, 1, current), target)


@pytest.mark.parametrize("current", list(OrderStatus))
def test_every_other_transition_is_refused_naming_the_current_status(current: OrderStatus) -> None:
    for target in set(OrderStatus) - ALLOWED[current]:
        with pytest.raises(TransitionNotAllowedError) as caught:
            check_transition(Order(7, 1, current), target)
        assert caught.value.current is current
        assert caught.value.target is target


def test_terminal_statuses_allow_nothing() -> None:
    assert {S.FAILED, S.PAYED, S.CANCELLED} == TERMINAL
    assert all(not ALLOWED[s] for s in TERMINAL)


def test_items_are_merged_per_sku_and_sorted_by_sku() -> None:
    merged = merge_items([Item(5, 1), Item(2, 3), Item(5, 4)])
    assert merged == (Item(2, 3), Item(5, 5))


def test_shortage_is_none_when_every_item_fits() -> None:
    stocks = {1: Stock(1, 10, 4), 2: Stock(2, 3, 0)}
    assert shortage([Item(1, 6), Item(2, 3)], stocks) is None


def test_shortage_names_the_short_sku_counting_merged_lines() -> None:
    stocks = {1: Stock(1, 10, 4), 2: Stock(2, 3, 0)}
    reason = shortage([Item(1, 4), Item(1, 3), Item(2, 1)], stocks)
    assert reason is not None
    assert "sku 1" in reason
    assert "6 available" in reason


def test_shortage_names_an_unknown_sku() -> None:
    assert shortage([Item(9, 1)], {}) == "unknown sku 9"


def test_event_has_id_order_status_utc_rfc3339_time_and_details() -> None:
    order = Order(42, 7, S.NEW, (Item(1, 2),))
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    event = order_event(order, S.FAILED, reason="not enough stock", at=at)
    uuid.UUID(event["event_id"])
    assert event["order_id"] == 42
    assert event["status"] == "failed"
    assert event["occurred_at"] == "2026-01-02T03:04:05.000006Z"
    assert event["details"] == {"user": 7, "items": [{"sku": 1, "count": 2}], "reason": "not enough stock"}


def test_two_events_never_share_an_id() -> None:
    order = Order(1, 1, S.NEW)
    assert order_event(order, S.NEW)["event_id"] != order_event(order, S.NEW)["event_id"]
