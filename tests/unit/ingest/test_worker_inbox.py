"""The worker's inbox holds at most what the broker may send before an ack: the prefetch, two batches."""

from __future__ import annotations

from typing import Any

from orderly.ingest.settings import IngestOptions, IngestSettings
from orderly.ingest.worker import Session, Writer
from orderly.platform.lifecycle import Shutdown
from orderly.platform.retry import Retry


async def test_the_workers_inbox_is_bounded_by_the_prefetch_it_asks_the_broker_for() -> None:
    settings = IngestSettings(ingest=IngestOptions(batch_size=3))
    shutdown = Shutdown()
    database = Retry(shutdown, dependency="postgres")
    session = Session(settings=settings, writer=Writer(settings), shutdown=shutdown, database=database)
    assert session.prefetch == 6
    assert session.inbox.maxsize == session.prefetch
    message: Any = object()
    for _ in range(session.prefetch):
        await session.on_message(message)
    assert session.inbox.full(), "a delivery past the prefetch would wait for room, never grow the inbox"
