"""Dead letters of the change log: events the audit parks in a JetStream stream of their own, and their replay.

Parking publishes the event to ``<prefix>ITEMS_DEAD.parked`` with headers naming the reason and the source (stream,
subject, sequence, deliveries), awaits the PubAck, and only then acks the original; a crash in between parks it again
under the same ``Nats-Msg-Id`` (``park:<stream>:<sequence>``), which the dead-letter stream drops as a duplicate.
Replay publishes the payload back to its subject and deletes the dead letter after the PubAck (a crash in between
leaves it parked; replaying it again is harmless, see ``replay``).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from orderly.items.changelog import MalformedEventError, row_from_payload
from orderly.items.settings import ItemsSettings
from orderly.items.stream import ensure_stream
from orderly.platform.deadletters import DeadLetter, DeadLetterNotFoundError, Replayed, ReplayRefusedError
from orderly.platform.pools import quiet_nats_callback

log = logging.getLogger(__name__)

REASON = "Orderly-Reason"
SOURCE_STREAM = "Orderly-Source-Stream"
SOURCE_SUBJECT = "Orderly-Source-Subject"
SOURCE_SEQUENCE = "Orderly-Source-Sequence"
SOURCE_MSG_ID = "Orderly-Source-Msg-Id"
DELIVERIES = "Orderly-Deliveries"
PARKED_AT = "Orderly-Parked-At"


async def ensure_dead_letter_stream(js: JetStreamContext, settings: ItemsSettings) -> None:
    await ensure_stream(
        js, name=settings.dead_letter_stream_name, duplicate_window_seconds=settings.items.duplicate_window_seconds
    )


async def park(js: JetStreamContext, *, dead_stream: str, message: Msg, reason: str) -> None:
    """Publish the message to the dead-letter stream (raises unless JetStream acked it); the caller acks after."""
    meta = message.metadata
    stream, sequence = meta.stream, meta.sequence.stream
    headers = {
        "Nats-Msg-Id": f"park:{stream}:{sequence}",
        REASON: reason[:2000],
        SOURCE_STREAM: stream,
        SOURCE_SUBJECT: message.subject,
        SOURCE_SEQUENCE: str(sequence),
        DELIVERIES: str(meta.num_delivered),
        PARKED_AT: datetime.now(UTC).isoformat(),
    }
    if message.headers and "Nats-Msg-Id" in message.headers:
        headers[SOURCE_MSG_ID] = message.headers["Nats-Msg-Id"]
    await js.publish(f"{dead_stream}.parked", message.data, stream=dead_stream, headers=headers)
    log.error(
        "change event parked as a dead letter",
        extra={"subject": message.subject, "sequence": sequence, "reason": reason, "dead_letter_stream": dead_stream},
    )


async def dead_letters_waiting(js: JetStreamContext, dead_stream: str) -> int:
    """How many dead letters wait in the stream."""
    info = await js.stream_info(dead_stream)
    return int(info.state.messages)


def _letter(raw: RawStreamMsg) -> DeadLetter:
    headers = raw.headers or {}
    parked_at = headers.get(PARKED_AT)
    details = {
        "source_stream": headers.get(SOURCE_STREAM, ""),
        "deliveries": headers.get(DELIVERIES, ""),
        "dead_letter_subject": raw.subject or "",
    }
    if SOURCE_MSG_ID in headers:
        details["event_id"] = headers[SOURCE_MSG_ID]
    return DeadLetter(
        id=str(raw.seq),
        payload=raw.data or b"",
        reason=headers.get(REASON, "?"),
        source=headers.get(SOURCE_SUBJECT, "?"),
        position=f"stream {headers.get(SOURCE_STREAM, '?')} sequence {headers.get(SOURCE_SEQUENCE, '?')}",
        parked_at=datetime.fromisoformat(parked_at) if parked_at else None,
        details=details,
    )


class ItemsDeadLetters:
    """`orderly dlq … items`: the dead-letter stream, read by sequence; replay goes back to the change stream."""

    pipeline = "items"

    def __init__(self, settings: ItemsSettings) -> None:
        self.settings = settings
        self.dead_stream = settings.dead_letter_stream_name
        self._nc: NatsClient | None = None

    @property
    def js(self) -> JetStreamContext:
        assert self._nc is not None, "use the store in `async with`"
        return self._nc.jetstream()

    async def __aenter__(self) -> Self:
        self._nc = await nats.connect(
            self.settings.nats.url(), connect_timeout=5, max_reconnect_attempts=2, error_cb=quiet_nats_callback
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def list(self) -> list[DeadLetter]:
        try:
            state = (await self.js.stream_info(self.dead_stream)).state
        except NotFoundError:  # no audit or migration ever ran here: nothing was parked
            return []
        letters = []
        if state.messages:
            for sequence in range(state.first_seq, state.last_seq + 1):
                with contextlib.suppress(NotFoundError):  # a gap: replayed and deleted
                    letters.append(_letter(await self.js.get_msg(self.dead_stream, sequence)))
        return letters

    async def get(self, letter_id: str) -> DeadLetter:
        try:
            return _letter(await self.js.get_msg(self.dead_stream, int(letter_id)))
        except (NotFoundError, ValueError):
            raise DeadLetterNotFoundError(
                f"no dead letter {letter_id!r} waits in items (ids are sequences of {self.dead_stream})"
            ) from None

    async def replay(self, letter_id: str) -> Replayed:
        """Publish the event back to its subject, then delete the dead letter.

        The re-publish carries ``Nats-Msg-Id: replay:<dead stream>:<sequence>``, so a second replay of the same dead
        letter (after a crash between PubAck and delete) is dropped by the change stream within its duplicate window;
        after that window, the change log's ReplacingMergeTree and FINAL reads keep one row per event id.
        """
        letter = await self.get(letter_id)
        try:
            row_from_payload(letter.payload)
        except MalformedEventError as exc:
            raise ReplayRefusedError(
                f"dead letter {letter_id} is still not a change event ({exc}); it stays parked"
            ) from None
        stream = letter.details.get("source_stream") or self.settings.stream_name
        await self.js.publish(
            letter.source,
            letter.payload,
            stream=stream,
            headers={"Nats-Msg-Id": f"replay:{self.dead_stream}:{letter.id}"},
        )
        await self.js.delete_msg(self.dead_stream, int(letter.id))
        log.info("dead letter replayed", extra={"id": letter.id, "subject": letter.source})
        return Replayed(id=letter.id, target=letter.source, sent=True)
