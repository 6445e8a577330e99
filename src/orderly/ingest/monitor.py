"""What the ingest probes read besides the process itself: queue figures and the daemon's backlog."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from orderly.ingest.settings import IngestOptions
from orderly.platform.settings import RabbitMQSettings, quote

# Counting the daemon's backlog stops here: the alert fires at 10,000, and a bounded count stays cheap.
DAEMON_LAG_CAP = 1_000_000


class QueueMonitor:
    """Queue figures from RabbitMQ's management API (the broker refreshes them every few seconds): the depth of the
    request queue and of its dead-letter queue, and which consumer is the queue's single active one."""

    def __init__(self, settings: RabbitMQSettings, options: IngestOptions) -> None:
        self.options = options
        self._client = httpx.AsyncClient(
            base_url=f"http://{settings.host}:{settings.management_port}/api/queues/{quote(settings.vhost)}/",
            auth=(settings.user, settings.password.get_secret_value()),
            timeout=1.5,
        )

    async def _queue(self, name: str) -> dict[str, Any]:
        response = await self._client.get(quote(name))
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def depth(self) -> tuple[int, str | None]:
        """Messages ready in the request queue, and the tag of its single active consumer (None: not known yet)."""
        queue = await self._queue(self.options.queue)
        return int(queue.get("messages_ready") or 0), queue.get("single_active_consumer_tag")

    async def dead_letters(self) -> int:
        """Messages parked in the dead-letter queue (``--skip-poison``)."""
        return int((await self._queue(self.options.dead_letter_queue)).get("messages_ready") or 0)

    async def aclose(self) -> None:
        await self._client.aclose()


async def daemon_lag(conn: asyncpg.Connection, *, name: str) -> int:
    """Events committed after the daemon's persisted cursor (bounded count)."""
    lag: int = await conn.fetchval(
        """SELECT count(*) FROM (
             SELECT 1 FROM events
              WHERE event_id > coalesce((SELECT last_event_id FROM daemon_cursors WHERE name = $1), 0)
              LIMIT $2) AS backlog""",
        name,
        DAEMON_LAG_CAP,
    )
    return lag
