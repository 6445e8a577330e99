"""Transactions whose lost commit says so, for the services' writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from orderly.platform.errors import OutcomeUnknownError, Transient, classify

if TYPE_CHECKING:
    import asyncpg


@asynccontextmanager
async def write_transaction(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A PostgreSQL transaction on ``conn`` that raises ``OutcomeUnknownError`` when the connection broke while its
    COMMIT was under way (the server may or may not have applied it). A failure before the commit rolls back as
    usual and is raised as it is: nothing was applied."""
    committing = False
    try:
        async with conn.transaction():
            yield conn
            committing = True
    except Exception as exc:
        if committing and isinstance(classify(exc, dependency="postgres"), Transient):
            raise OutcomeUnknownError("postgres") from exc
        raise
