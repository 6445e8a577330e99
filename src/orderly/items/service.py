"""Use cases of the items service. Each takes its adapters as keyword arguments and owns its transaction."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import uuid_utils
from redis.exceptions import RedisError

from orderly.items import repository as repo
from orderly.items.cache import ListCache, SingleFlight
from orderly.items.domain import (
    CampaignNotFoundError,
    ChangeEvent,
    EventKind,
    InvalidFieldError,
    Item,
    ItemNotFoundError,
    Page,
    check_priority,
    clean_description,
    clean_name,
)
from orderly.items.settings import LIST_MAX_OFFSET
from orderly.platform.errors import OutcomeUnknownError
from orderly.platform.retry import OutageLog
from orderly.platform.transactions import WriteTransaction

log = logging.getLogger(__name__)
_outages = OutageLog(logger=log)  # a Redis outage is one log line, not one per list request

# Test seam: called between the PostgreSQL read and the cache write of a list miss.
AfterLoad = Callable[[], Awaitable[None]]


async def _invalidate(cache: ListCache) -> None:
    """Bump the list generation after a write's commit (each write calls it after its transaction's block, which a
    rollback never gets past). If Redis fails here the change is committed but cached pages may still show the old
    list: the caller is told the outcome is not known rather than that nothing happened."""
    try:
        await cache.invalidate()
    except RedisError as exc:
        raise OutcomeUnknownError("redis") from exc


async def _lock_item(conn: asyncpg.Connection, *, item_id: int, campaign_id: int) -> Item:
    """The item's row, locked until the transaction ends; ``ItemNotFoundError`` when the campaign has no such item."""
    item = await repo.lock_item(conn, item_id=item_id, campaign_id=campaign_id)
    if item is None:
        raise ItemNotFoundError(item_id)
    return item


def _events(kind: EventKind, items: list[Item]) -> list[ChangeEvent]:
    at = datetime.now(UTC)
    return [ChangeEvent(event_id=str(uuid_utils.uuid7()), kind=kind, item=item, event_time=at) for item in items]


async def create_item(
    *, pool: asyncpg.Pool, cache: ListCache, campaign_id: int, name: str, description: str | None
) -> Item:
    """Insert an item at the end of the priority order (max + 1, serialised by an advisory lock)."""
    name, description = clean_name(name), clean_description(description)
    async with pool.acquire() as conn, WriteTransaction(conn):
        if not await repo.campaign_exists(conn, campaign_id):
            raise CampaignNotFoundError(campaign_id)
        await repo.lock_priorities(conn)
        item = await repo.insert_item(conn, campaign_id=campaign_id, name=name, description=description)
        await repo.add_events(conn, _events("created", [item]))
    await _invalidate(cache)
    return item


async def update_item(
    *,
    pool: asyncpg.Pool,
    cache: ListCache,
    item_id: int,
    campaign_id: int,
    name: str,
    description: str | None,
    keep_description: bool = False,
) -> Item:
    """Lock the row, validate, change it and record the event in one transaction.

    ``keep_description`` leaves the stored description as it is (the request did not mention it).
    """
    async with pool.acquire() as conn, WriteTransaction(conn):
        current = await _lock_item(conn, item_id=item_id, campaign_id=campaign_id)
        item = replace(
            current,
            name=clean_name(name),
            description=current.description if keep_description else clean_description(description),
        )
        await repo.save_edit(conn, item, _events("updated", [item]))
    await _invalidate(cache)
    return item


async def remove_item(*, pool: asyncpg.Pool, cache: ListCache, item_id: int, campaign_id: int) -> Item:
    """Soft-delete: the row stays, flagged removed; a second remove finds nothing to remove."""
    async with pool.acquire() as conn, WriteTransaction(conn):
        await _lock_item(conn, item_id=item_id, campaign_id=campaign_id)
        item = await repo.mark_removed(conn, item_id=item_id)
        await repo.add_events(conn, _events("removed", [item]))
    await _invalidate(cache)
    return item


async def reprioritize_item(
    *, pool: asyncpg.Pool, cache: ListCache, item_id: int, campaign_id: int, new_priority: int, max_moves: int
) -> list[Item]:
    """Move the item to ``new_priority``; the items in its way move up by one. Returns the changed items.

    Only the unbroken run of priorities from ``new_priority`` is in the way (the first free priority ends it), so the
    order is the one shifting every item at or above would give, at the cost of the run alone. A run longer than
    ``max_moves`` is refused before anything changes: one request's work (row updates, outbox events, one change
    each in /logs) stays bounded.
    """
    new_priority = check_priority(new_priority)
    async with pool.acquire() as conn, WriteTransaction(conn):
        # Same order as create (priority lock, then row lock) so the two can never deadlock.
        await repo.lock_priorities(conn)
        await _lock_item(conn, item_id=item_id, campaign_id=campaign_id)
        shifted = await repo.collision_run(conn, item_id=item_id, new_priority=new_priority, limit=max_moves)
        if len(shifted) > max_moves:
            raise InvalidFieldError(
                "newPriority", f"would move more than {max_moves} other items; choose a priority nearer a free one"
            )
        changed = await repo.move_items(conn, item_id=item_id, new_priority=new_priority, shifted=shifted)
        await repo.add_events(conn, _events("reprioritized", changed))
    await _invalidate(cache)
    return changed


async def list_items(
    *,
    pool: asyncpg.Pool,
    cache: ListCache,
    limit: int,
    offset: int,
    max_offset: int = LIST_MAX_OFFSET,
    after_load: AfterLoad | None = None,
    flights: SingleFlight[bytes] | None = None,
) -> tuple[bytes, bool]:
    """The page as JSON bytes and whether it came from the cache (cache-aside, generation-keyed).

    With ``flights``, concurrent misses of one page under one generation share one PostgreSQL read and one store
    (a burst of readers after a write costs one query, not one each). Sharing cannot serve a page older than a
    write the caller has seen answered: every write bumps the generation before its response, so a reader that
    starts after that response sees the new generation and joins, or starts, a load of its own.
    """
    if offset > max_offset:
        raise InvalidFieldError("offset", f"at most {max_offset}")
    generation: int | None
    try:
        generation, cached = await cache.lookup(limit=limit, offset=offset)
    except RedisError as exc:
        _outages.note("redis", exc, "reading PostgreSQL uncached")
        generation, cached = None, None
    if cached is not None:
        return cached, True

    async def load() -> bytes:
        async with pool.acquire() as conn:
            counts, items = await repo.page(conn, limit=limit, offset=offset)
        page = Page(total=counts.total, removed=counts.removed, limit=limit, offset=offset, items=items)
        body = page.to_json_bytes()
        if after_load is not None:
            await after_load()
        if generation is not None:
            try:
                await cache.store(generation=generation, limit=limit, offset=offset, body=body)
            except RedisError as exc:
                _outages.note("redis", exc, "page not stored")
        return body

    if flights is None or generation is None:
        return await load(), False
    return await flights.run((generation, limit, offset), load), False
