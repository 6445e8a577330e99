"""Pure rules of the items service: validation, event payloads as ClickHouse rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orderly.items.changelog import row_from_payload
from orderly.items.domain import (
    ChangeEvent,
    InvalidFieldError,
    Item,
    Page,
    check_priority,
    clean_description,
    clean_name,
)

ITEM = Item(
    id=7,
    campaign_id=1,
    name="имя",
    description=None,
    priority=3,
    removed=False,
    created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
)


def test_a_name_is_trimmed_and_must_not_be_blank() -> None:
    assert clean_name("  x  ") == "x"
    for blank in ("", "   ", "\t\n"):
        with pytest.raises(InvalidFieldError) as caught:
            clean_name(blank)
        assert caught.value.field == "name"


def test_oversized_fields_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidFieldError, match="name"):
        clean_name("x" * 256)
    assert clean_name("x" * 255) == "x" * 255
    with pytest.raises(InvalidFieldError, match="description"):
        clean_description("d" * 2001)
    assert clean_description(None) is None


def test_a_priority_starts_at_one() -> None:
    assert check_priority(1) == 1
    with pytest.raises(InvalidFieldError, match="newPriority"):
        check_priority(0)


def test_an_event_payload_becomes_one_clickhouse_row() -> None:
    at = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    event = ChangeEvent(event_id="0190-x", kind="updated", item=ITEM, event_time=at)
    import json

    row = row_from_payload(json.dumps(event.payload()).encode())
    assert row == (
        "0190-x",
        7,
        1,
        "имя",
        None,
        3,
        0,
        "updated",
        datetime(2026, 5, 6, 7, 8, 9),
        int(at.timestamp() * 1e6),
    )
    assert event.subject == "item.updated"


def test_a_page_serialises_with_meta_and_camel_case_fields() -> None:
    body = Page(total=2, removed=1, limit=10, offset=1, items=[ITEM]).to_json_bytes()
    assert body.startswith(b'{"meta":{"total":2,"removed":1,"limit":10,"offset":1},"items":[{"id":7,"campaignId":1')
    assert b'"createdAt":"2026-01-02T03:04:05.678901Z"' in body
