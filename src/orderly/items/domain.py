"""Pure rules of the items service: what an item is, what a valid edit is, what a change event carries. No I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

NAME_MAX_LENGTH = 255
DESCRIPTION_MAX_LENGTH = 2000

EventKind = Literal["created", "updated", "removed", "reprioritized"]


class ItemsError(Exception):
    """Base of every failure the items service reports to its callers."""


class NotFoundError(ItemsError):
    """A row the request names does not exist; ``message`` is the contract's message key."""

    message = "errors.notFound"


class ItemNotFoundError(NotFoundError):
    message = "errors.item.notFound"


class CampaignNotFoundError(NotFoundError):
    message = "errors.campaign.notFound"


class InvalidFieldError(ItemsError):
    """A field's value breaks a rule (blank name, oversized text, priority out of range)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True, slots=True)
class Item:
    id: int
    campaign_id: int
    name: str
    description: str | None
    priority: int
    removed: bool
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "campaignId": self.campaign_id,
            "name": self.name,
            "description": self.description,
            "priority": self.priority,
            "removed": self.removed,
            "createdAt": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Page:
    total: int
    removed: int
    limit: int
    offset: int
    items: list[Item]

    def to_json_bytes(self) -> bytes:
        body = {
            "meta": {"total": self.total, "removed": self.removed, "limit": self.limit, "offset": self.offset},
            "items": [item.to_json() for item in self.items],
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    event_id: str
    kind: EventKind
    item: Item
    event_time: datetime

    @property
    def subject(self) -> str:
        """Subject suffix under the stream's name, e.g. ``item.updated``."""
        return f"item.{self.kind}"

    def payload(self) -> dict[str, Any]:
        return {
            "eventId": self.event_id,
            "kind": self.kind,
            "itemId": self.item.id,
            "campaignId": self.item.campaign_id,
            "name": self.item.name,
            "description": self.item.description,
            "priority": self.item.priority,
            "removed": self.item.removed,
            "eventTime": iso(self.event_time),
            "eventTimeUs": epoch_us(self.event_time),
        }


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def epoch_us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def clean_name(name: str) -> str:
    """The name as stored: trimmed, not blank, at most NAME_MAX_LENGTH characters."""
    trimmed = name.strip()
    if not trimmed:
        raise InvalidFieldError("name", "must not be blank")
    if len(trimmed) > NAME_MAX_LENGTH:
        raise InvalidFieldError("name", f"at most {NAME_MAX_LENGTH} characters")
    return trimmed


def clean_description(description: str | None) -> str | None:
    if description is None:
        return None
    if len(description) > DESCRIPTION_MAX_LENGTH:
        raise InvalidFieldError("description", f"at most {DESCRIPTION_MAX_LENGTH} characters")
    return description


def check_priority(priority: int) -> int:
    if priority < 1:
        raise InvalidFieldError("newPriority", "must be at least 1")
    return priority
