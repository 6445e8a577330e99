"""Use cases: accept a request (API), store batches in delivery order (worker). Adapters come in as arguments."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

from uuid_utils.compat import uuid7

from orderly.ingest.domain import (
    AcceptedRequest,
    BrokerNotConnectedError,
    BrokerUnavailableError,
    OutcomeUnknownError,
    StoredBatch,
    parse_numbers,
)
from orderly.ingest.settings import IngestOptions
from orderly.platform.errors import Permanent, PermanentError, Transient, classify

log = logging.getLogger(__name__)


class RequestPublisher(Protocol):
    async def publish(self, request: AcceptedRequest) -> None: ...


Revoker = Callable[[UUID], Awaitable[bool]]


async def accept(
    *, query: bytes, publisher: RequestPublisher, revoke: Revoker, options: IngestOptions
) -> AcceptedRequest:
    """Validate, give the request a token, and return once the broker confirmed the persistent message."""
    numbers = parse_numbers(query, max_numbers=options.max_numbers, max_query_bytes=options.max_query_bytes)
    request = AcceptedRequest(token=uuid7(), numbers=numbers, accepted_at=datetime.now(UTC))
    try:
        await publisher.publish(request)
    except BrokerNotConnectedError:
        raise  # nothing was sent, so there is no confirm to settle
    except BrokerUnavailableError:
        # The broker may hold the message although its confirm was lost. Decide under the writer's lock: either the
        # worker stored it already (then it is accepted after all) or it is revoked and will never be stored.
        try:
            revoked = await revoke(request.token)
        except Exception as exc:
            log.exception(
                "unconfirmed publish could not be revoked: its outcome is unknown", extra={"token": str(request.token)}
            )
            raise OutcomeUnknownError(request.token) from exc
        if not revoked:
            log.info("unconfirmed publish was stored already", extra={"token": str(request.token)})
            return request
        raise
    return request


class BatchStore(Protocol):
    async def store_batch(self, batch: Sequence[AcceptedRequest]) -> StoredBatch: ...


class StoreFailedError(Exception):
    """A batch failed with an error of its own (poison) ``max_attempts`` times in a row."""


async def store_with_retry(
    *,
    batch: Sequence[AcceptedRequest],
    store: Callable[[], Awaitable[BatchStore]],
    on_transient: Callable[[BaseException], Awaitable[bool]],
    max_attempts: int,
) -> StoredBatch:
    """Store one batch. A transient error (the server is away) is waited out by ``on_transient`` (False: give up); a
    permanent one (database or schema missing, credentials refused) raises ``PermanentError``, since no request can
    be stored until the operator acts; any other error is the batch's own and is retried up to ``max_attempts``
    times. Nothing is acknowledged here: the caller acks after this returns."""
    failures = 0
    while True:
        try:
            return await (await store()).store_batch(batch)
        except Exception as exc:
            fault = classify(exc, dependency="postgres")
            if isinstance(fault, Transient):
                if not await on_transient(exc):
                    raise
                continue
            if isinstance(fault, Permanent):
                raise PermanentError(fault) from exc
            failures += 1
            log.warning(
                "batch failed", extra={"attempt": failures, "size": len(batch), "error": f"{type(exc).__name__}: {exc}"}
            )
            if failures >= max_attempts:
                raise StoreFailedError(f"{type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(0.05 * failures)
