"""Transactions whose lost commit says so, for the services' writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orderly.platform.errors import OutcomeUnknownError, Transient, classify

if TYPE_CHECKING:
    from types import TracebackType

    import asyncpg
    from asyncpg.transaction import Transaction


class WriteTransaction:
    """A PostgreSQL transaction on ``conn`` that raises ``OutcomeUnknownError`` when the connection broke while its
    COMMIT was under way (the server may or may not have applied it). A failure before the commit rolls back as
    usual and is raised as it is: nothing was applied.

    ``async with WriteTransaction(conn) as conn: ...``. A class rather than an ``@asynccontextmanager`` generator:
    every write of the APIs passes through it, and the generator's machinery (an async generator object, its
    finaliser hooks, ``contextlib``'s wrapper) cost a tenth of the Python calls of an items write.
    """

    __slots__ = ("_conn", "_transaction")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._transaction: Transaction = conn.transaction()

    async def __aenter__(self) -> asyncpg.Connection:
        await self._transaction.__aenter__()
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            await self._transaction.__aexit__(exc_type, exc, tb)  # rolls back; the body's exception goes on
            return
        try:
            await self._transaction.__aexit__(None, None, None)  # commits
        except Exception as error:
            if isinstance(classify(error, dependency="postgres"), Transient):
                raise OutcomeUnknownError("postgres") from error
            raise
