"""What every pipeline's dead letters look like to an operator, and the one protocol `orderly dlq` drives.

Each service keeps its own dead letters where its broker keeps messages (a RabbitMQ queue, a Kafka topic, a JetStream
stream) and implements :class:`DeadLetterStore` in its own folder; this module holds no broker code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self


class DeadLetterError(Exception):
    """Base of the dead-letter tools' errors; the message is meant for the operator."""


class DeadLetterNotFoundError(DeadLetterError):
    """No dead letter with this id is waiting (it was replayed already, or never parked)."""


class ReplayRefusedError(DeadLetterError):
    """The payload would be poison again where it came from (e.g. it still cannot be parsed); it stays parked."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One parked message: what it was, why it was parked, and where it came from."""

    id: str  # what `orderly dlq show|replay` takes
    payload: bytes
    reason: str
    source: str  # the queue, subject or topic it was taken from, and goes back to
    position: str = ""  # partition/offset or stream sequence at the source, when the broker has one
    parked_at: datetime | None = None
    details: dict[str, str] = field(default_factory=dict)  # broker specifics: key, deliveries, message id, ...

    def summary(self) -> dict[str, Any]:
        """The JSON form (`--json`); the payload as text when it is UTF-8, else as a hex string."""
        try:
            payload: str = self.payload.decode()
            encoding = "utf-8"
        except UnicodeDecodeError:
            payload, encoding = self.payload.hex(), "hex"
        return {
            "id": self.id,
            "reason": self.reason,
            "source": self.source,
            "position": self.position,
            "parked_at": self.parked_at.isoformat() if self.parked_at else None,
            "details": self.details,
            "payload": payload,
            "payload_encoding": encoding,
        }

    def pretty_payload(self) -> str:
        try:
            return json.dumps(json.loads(self.payload), indent=2, ensure_ascii=False)
        except (UnicodeDecodeError, ValueError):
            return repr(self.payload)


@dataclass(frozen=True, slots=True)
class Replayed:
    """The answer to one replay: where the payload went, and whether it was sent (False: it was replayed before)."""

    id: str
    target: str
    sent: bool
    note: str = ""
    refused: bool = False  # only in `replay --all`, which goes on after a refusal


class DeadLetterStore(Protocol):
    """A pipeline's dead letters; opened with ``async with`` (it holds broker connections)."""

    pipeline: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def list(self) -> list[DeadLetter]:
        """Every dead letter waiting, oldest first."""
        ...

    async def replay(self, letter_id: str) -> Replayed:
        """Send it back where it came from; remove it only after the source confirmed the re-send."""
        ...


async def find(store: DeadLetterStore, letter_id: str) -> DeadLetter:
    for letter in await store.list():
        if letter.id == letter_id:
            return letter
    raise DeadLetterNotFoundError(f"no dead letter {letter_id!r} waits in {store.pipeline}")
