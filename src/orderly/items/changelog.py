"""ClickHouse adapter: the change log table, written in batches by the audit process and read by GET /logs.

clickhouse-driver is blocking and a client is not thread-safe, so each adapter owns one client behind a lock and
runs its calls in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_driver import Client

from orderly.items.domain import iso

COLUMNS = "event_id, item_id, campaign_id, name, description, priority, removed, kind, event_time, event_time_us"


class MalformedEventError(ValueError):
    """A message on the change stream is not a change event this service wrote (poison: parked, never retried)."""


def _text(event: dict[str, Any], key: str, *, nullable: bool = False) -> str | None:
    value = event[key]
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise MalformedEventError(f"{key} is not a string")
    return value


def _event(payload: bytes) -> dict[str, Any]:
    event = json.loads(payload)
    if not isinstance(event, dict):
        raise MalformedEventError("not a JSON object")
    return event


def row_from_payload(payload: bytes) -> tuple[Any, ...]:
    """One ClickHouse row from a change event's JSON (as the relay published it); MalformedEventError if it is not."""
    try:
        event = _event(payload)
        us = int(event["eventTimeUs"])
        return (
            _text(event, "eventId"),
            int(event["itemId"]),
            int(event["campaignId"]),
            _text(event, "name"),
            _text(event, "description", nullable=True),
            int(event["priority"]),
            1 if event["removed"] else 0,
            _text(event, "kind"),
            datetime.fromtimestamp(us // 1_000_000, UTC).replace(tzinfo=None),
            us,
        )
    except MalformedEventError:
        raise
    except (ValueError, KeyError, TypeError, OverflowError, OSError) as exc:  # OSError: a timestamp out of range
        raise MalformedEventError(f"not a change event: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class LogQuery:
    limit: int
    offset: int  # 1-based position of the first event, newest first
    item_id: int | None = None
    campaign_id: int | None = None


class ChangeLog:
    def __init__(self, client: Client, *, database: str) -> None:
        self._client = client
        self._table = f"`{database}`.item_events"
        self._lock = asyncio.Lock()

    async def _run(self, query: str, params: Any = None) -> Any:
        async with self._lock:
            return await asyncio.to_thread(self._client.execute, query, params)

    async def insert(self, payloads: Sequence[bytes]) -> int:
        return await self.insert_rows([row_from_payload(p) for p in payloads])

    async def insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> int:
        await self._run(f"INSERT INTO {self._table} ({COLUMNS}) VALUES", list(rows))
        return len(rows)

    async def ping(self) -> bool:
        return bool(await self._run("SELECT 1"))

    async def read(self, query: LogQuery) -> tuple[int, list[dict[str, Any]]]:
        """Events newest first, each once (FINAL collapses redelivered duplicates), and how many match."""
        where, params = [], {"limit": query.limit, "offset": query.offset - 1}
        if query.item_id is not None:
            where.append("item_id = %(item_id)s")
            params["item_id"] = query.item_id
        if query.campaign_id is not None:
            where.append("campaign_id = %(campaign_id)s")
            params["campaign_id"] = query.campaign_id
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        # The table's database passed the settings' identifier pattern; the conditions are fixed fragments above and
        # every value is a bound parameter.
        [(total,)] = await self._run(f"SELECT count() FROM {self._table} FINAL {condition}", params)  # noqa: S608
        rows = await self._run(
            f"""SELECT {COLUMNS} FROM {self._table} FINAL {condition}
                ORDER BY event_time_us DESC, event_id DESC LIMIT %(offset)s, %(limit)s""",  # noqa: S608
            params,
        )
        return int(total), [_event_json(r) for r in rows]

    def close(self) -> None:
        self._client.disconnect()


def _event_json(row: Sequence[Any]) -> dict[str, Any]:
    event_id, item_id, campaign_id, name, description, priority, removed, kind, _, us = row
    return {
        "eventId": event_id,
        "kind": kind,
        "itemId": item_id,
        "campaignId": campaign_id,
        "name": name,
        "description": description,
        "priority": priority,
        "removed": bool(removed),
        "eventTime": iso(datetime.fromtimestamp(us / 1_000_000, UTC)),
    }
