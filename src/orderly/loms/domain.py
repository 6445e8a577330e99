"""Pure order rules: statuses, allowed transitions, stock reservation arithmetic, event shape. No I/O here."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class OrderStatus(StrEnum):
    NEW = "new"
    AWAITING_PAYMENT = "awaiting payment"
    FAILED = "failed"
    PAYED = "payed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({OrderStatus.FAILED, OrderStatus.PAYED, OrderStatus.CANCELLED})

# What each status may become; everything else is refused with the current status.
ALLOWED: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.NEW: frozenset({OrderStatus.AWAITING_PAYMENT, OrderStatus.FAILED, OrderStatus.CANCELLED}),
    OrderStatus.AWAITING_PAYMENT: frozenset({OrderStatus.PAYED, OrderStatus.CANCELLED}),
    OrderStatus.FAILED: frozenset(),
    OrderStatus.PAYED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}


class LomsError(Exception):
    """Base of the failures a loms use case reports to its caller."""


class OrderNotFoundError(LomsError):
    def __init__(self, order_id: int) -> None:
        super().__init__(f"order {order_id} not found")
        self.order_id = order_id


class SkuNotFoundError(LomsError):
    def __init__(self, sku: int) -> None:
        super().__init__(f"sku {sku} not found")
        self.sku = sku


class TransitionNotAllowedError(LomsError):
    def __init__(self, order_id: int, current: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"order {order_id} is {current.value!r}; it cannot become {target.value!r}")
        self.order_id, self.current, self.target = order_id, current, target


@dataclass(frozen=True)
class Item:
    sku: int
    count: int


@dataclass(frozen=True)
class Stock:
    sku: int
    total: int
    reserved: int

    @property
    def available(self) -> int:
        return self.total - self.reserved


@dataclass(frozen=True)
class Order:
    id: int
    user: int
    status: OrderStatus
    items: tuple[Item, ...] = field(default=())


def check_transition(order: Order, target: OrderStatus) -> None:
    """Raise ``TransitionNotAllowedError`` unless ``order`` may move to ``target``."""
    if target not in ALLOWED[order.status]:
        raise TransitionNotAllowedError(order.id, order.status, target)


def merge_items(items: Iterable[Item]) -> tuple[Item, ...]:
    """One line per sku, counts added up, sorted by sku (the order stock rows are locked in)."""
    totals: dict[int, int] = {}
    for item in items:
        totals[item.sku] = totals.get(item.sku, 0) + item.count
    return tuple(Item(sku, count) for sku, count in sorted(totals.items()))


def shortage(items: Iterable[Item], stocks: Mapping[int, Stock]) -> str | None:
    """Why the items cannot all be reserved at once, or None when they can."""
    for item in merge_items(items):
        stock = stocks.get(item.sku)
        if stock is None:
            return f"unknown sku {item.sku}"
        if stock.available < item.count:
            return f"not enough stock for sku {item.sku}: {item.count} wanted, {stock.available} available"
    return None


def order_event(
    order: Order, status: OrderStatus, *, reason: str | None = None, at: datetime | None = None
) -> dict[str, Any]:
    """The event a status change publishes: id for de-duplication, the order, what happened, when, and details."""
    occurred_at = (at or datetime.now(UTC)).astimezone(UTC)
    details: dict[str, Any] = {
        "user": order.user,
        "items": [{"sku": i.sku, "count": i.count} for i in order.items],
    }
    if reason is not None:
        details["reason"] = reason
    return {
        "event_id": str(uuid.uuid4()),
        "order_id": order.id,
        "status": status.value,
        "occurred_at": occurred_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "details": details,
    }
