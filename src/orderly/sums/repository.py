"""MySQL adapter: the hot sum row and the idempotency-key table. SQL runs on MariaDB 10.11 and MySQL 8 alike."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncmy.errors

from orderly.sums.domain import CommitOutcomeUnknownError, StorageUnavailableError, StoredResponse

log = logging.getLogger(__name__)

# Every connection reads committed data and takes no gap locks: the hot row's lock is what serialises writers.
SESSION_INIT = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
_STORAGE_ERRORS = (asyncmy.errors.Error, OSError, TimeoutError)


class SumTransaction:
    """One open transaction; every writer takes the hot row's lock first, so writers never interleave."""

    def __init__(self, cursor: Any) -> None:
        self._cur = cursor

    async def lock_total(self) -> int:
        await self._cur.execute("SELECT total FROM sum_total WHERE id = 1 FOR UPDATE")
        row = await self._cur.fetchone()
        if row is None:
            raise StorageUnavailableError("sum_total has no row; run `orderly sums migrate`")
        return int(row[0])

    async def stored_keys(self, keys: Iterable[str]) -> dict[str, StoredResponse]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        marks = ", ".join(["%s"] * len(wanted))
        await self._cur.execute(
            # Only the count of %s placeholders is interpolated; the keys are bound parameters.
            f"SELECT ikey, fingerprint, response FROM idempotency_keys WHERE ikey IN ({marks})",  # noqa: S608
            [k.encode() for k in wanted],
        )
        rows = await self._cur.fetchall()
        return {
            bytes(ikey).decode(): StoredResponse(fingerprint=str(fp), body=str(body).encode())
            for ikey, fp, body in rows
        }

    async def insert_keys(self, rows: Iterable[tuple[str, StoredResponse]], *, ttl_s: int) -> None:
        params: list[Any] = []
        values: list[str] = []
        for key, response in rows:
            values.append("(%s, %s, %s, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL %s SECOND)")
            params += [key.encode(), response.fingerprint, response.body.decode(), ttl_s]
        if values:
            await self._cur.execute(
                # One fixed placeholder tuple per row is joined in; every value is a bound parameter.
                "INSERT INTO idempotency_keys (ikey, fingerprint, response, created_at, expires_at) VALUES "  # noqa: S608
                + ", ".join(values),
                params,
            )

    async def add(self, amount: int) -> None:
        if amount:
            await self._cur.execute("UPDATE sum_total SET total = total + %s WHERE id = 1", (amount,))


class SumStore:
    """The MySQL side of the service over a connection pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SumTransaction]:
        """A transaction committed when the block exits cleanly and rolled back otherwise.

        Driver and network errors surface as ``StorageUnavailableError`` (``CommitOutcomeUnknownError`` when they cut
        the COMMIT off). A broken connection is closed, not reused.
        """
        committing = False
        try:
            async with self._pool.acquire() as conn:
                try:
                    async with conn.cursor() as cur:
                        yield SumTransaction(cur)
                    committing = True
                    await conn.commit()
                except BaseException:
                    with contextlib.suppress(*_STORAGE_ERRORS):
                        await conn.rollback()
                    conn.close()
                    raise
        except _STORAGE_ERRORS as error:
            log.warning("mysql transaction failed", extra={"error": repr(error), "during_commit": committing})
            if committing:
                raise CommitOutcomeUnknownError(
                    "the connection to mysql broke during the commit: the request may have been applied"
                ) from error
            raise StorageUnavailableError("the sum store is unavailable") from error

    async def _fetch_one(self, sql: str, args: tuple[Any, ...] | None = None) -> tuple[Any, ...] | None:
        """One row of a read-only statement on a pooled connection (rolled back after; a broken one is closed)."""
        try:
            async with self._pool.acquire() as conn:
                try:
                    async with conn.cursor() as cur:
                        await cur.execute(sql, args)
                        row: tuple[Any, ...] | None = await cur.fetchone()
                    await conn.rollback()
                except BaseException:
                    conn.close()
                    raise
        except _STORAGE_ERRORS as error:
            raise StorageUnavailableError("the sum store is unavailable") from error
        return row

    async def current_total(self) -> int:
        """The committed sum (a read-only request; nothing to be stale against)."""
        row = await self._fetch_one("SELECT total FROM sum_total WHERE id = 1")
        if row is None:
            raise StorageUnavailableError("sum_total has no row; run `orderly sums migrate`")
        return int(row[0])

    async def find_key(self, key: str) -> StoredResponse | None:
        """The committed row of a key, if any (used to tell a live in-progress mark from a stale one)."""
        row = await self._fetch_one(
            "SELECT fingerprint, response FROM idempotency_keys WHERE ikey = %s", (key.encode(),)
        )
        return None if row is None else StoredResponse(fingerprint=str(row[0]), body=str(row[1]).encode())

    async def add_autocommit(self, amount: int) -> None:
        """The reference design's update: upsert the row and commit on its own (no key recorded)."""
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(
                    "INSERT INTO sum_total (id, total) VALUES (1, %s) ON DUPLICATE KEY UPDATE total = total + %s",
                    (amount, amount),
                )
                await conn.commit()
        except _STORAGE_ERRORS as error:
            raise StorageUnavailableError("the sum store is unavailable") from error

    async def purge_expired(self, *, limit: int) -> int:
        """Delete up to ``limit`` expired key rows in one short transaction; returns how many went."""
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(
                    "DELETE FROM idempotency_keys WHERE expires_at < UTC_TIMESTAMP(6) ORDER BY expires_at LIMIT %s",
                    (limit,),
                )
                deleted = int(cur.rowcount)
                await conn.commit()
        except _STORAGE_ERRORS as error:
            raise StorageUnavailableError("the sum store is unavailable") from error
        return deleted
