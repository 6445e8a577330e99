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
from clickhouse_driver.errors import Error as ClickHouseError
from clickhouse_driver.errors import ErrorCodes

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


# ClickHouse refuses these because of the values in the rows: the same rows fail the same way every time.
_DATA_ERRORS = frozenset(
    {
        ErrorCodes.CANNOT_PARSE_TEXT,
        ErrorCodes.CANNOT_PARSE_QUOTED_STRING,
        ErrorCodes.CANNOT_PARSE_INPUT_ASSERTION_FAILED,
        ErrorCodes.CANNOT_PARSE_DATE,
        ErrorCodes.CANNOT_PARSE_DATETIME,
        ErrorCodes.TYPE_MISMATCH,
        ErrorCodes.ARGUMENT_OUT_OF_BOUND,
        ErrorCodes.CANNOT_CONVERT_TYPE,
        ErrorCodes.CANNOT_PARSE_NUMBER,
        ErrorCodes.INCORRECT_DATA,
        ErrorCodes.TOO_LARGE_STRING_SIZE,
        ErrorCodes.VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE,
        ErrorCodes.CANNOT_PARSE_UUID,
    }
)


def refused_permanently(exc: BaseException) -> bool:
    """True when ClickHouse (or the driver, encoding the rows) refused the insert because of its data.

    Everything else — refused connections, timeouts, a server restarting, a missing table, errors we do not know — is
    treated as transient and retried, never dead-lettered: parking a whole stream because of an outage would be worse
    than waiting. LEAD: swap for the shared transient/permanent/poison classification of orderly.platform.errors once
    it is on main (the "outage" helper's); keep the data-error codes above as this adapter's contribution.
    """
    if isinstance(exc, ClickHouseError):
        return getattr(exc, "code", None) in _DATA_ERRORS
    # The driver packs values itself: a value its column type cannot hold fails before anything is sent.
    return isinstance(exc, (TypeError, ValueError, OverflowError))


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
        [(total,)] = await self._run(f"SELECT count() FROM {self._table} FINAL {condition}", params)
        rows = await self._run(
            f"""SELECT {COLUMNS} FROM {self._table} FINAL {condition}
                ORDER BY event_time_us DESC, event_id DESC LIMIT %(offset)s, %(limit)s""",
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
