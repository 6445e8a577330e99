"""Clients of ingest's two entries: HTTP (GET /ingest → 202) and STOMP (SEND → RECEIPT). Each returns the token.

The STOMP client follows the contract in docs/ingest.md: the client picks its token (a UUIDv7) and sends it in the
``token`` header, SENDs the JSON array of its integers persistently to ``/exchange/<stomp_exchange>`` with a
``receipt`` header, and counts the request as accepted only when the RECEIPT arrives (RabbitMQ sends it after the
broker confirmed the message). No receipt — an ERROR frame, a dropped connection, the timeout — means "not accepted";
sending again with the same token is safe: a token already stored is never stored twice.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from uuid import UUID

import httpx
import stomp
from uuid_utils.compat import uuid7

from orderly.ingest.settings import IngestSettings


class NotAcceptedError(Exception):
    """The entry did not accept the request (or did not say so in time): nothing is promised for it."""


def send_http(settings: IngestSettings, numbers: Sequence[int], *, timeout: float = 10.0) -> UUID:
    """GET /ingest with the numbers; the token of the 202."""
    url = f"http://{settings.http.host}:{settings.http.port}/ingest"
    try:
        response = httpx.get(url, params=[("n", str(n)) for n in numbers], timeout=timeout)
    except httpx.HTTPError as exc:
        raise NotAcceptedError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 202:
        raise NotAcceptedError(f"{url} answered {response.status_code}: {response.text.strip()}")
    return UUID(response.json()["token"])


class _Receipts(stomp.ConnectionListener):  # type: ignore[misc]
    """Receipts and failures of one STOMP connection, as events a sender can wait on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: dict[str, threading.Event] = {}
        self.failure = ""
        self.answered = threading.Event()  # CONNECTED arrived, or the connection failed: connect() waits on it

    def on_connected(self, frame: Any) -> None:  # noqa: ARG002 - stomp.py passes the CONNECTED frame
        self.answered.set()

    def expect(self, receipt: str) -> threading.Event:
        with self.lock:
            event = self.waiting[receipt] = threading.Event()
        return event

    def on_receipt(self, frame: Any) -> None:
        with self.lock:
            event = self.waiting.pop(frame.headers.get("receipt-id", ""), None)
        if event is not None:
            event.set()

    def _fail(self, why: str) -> None:
        with self.lock:
            self.failure = self.failure or why
            waiting, self.waiting = self.waiting, {}
        self.answered.set()
        for event in waiting.values():
            event.set()

    def on_error(self, frame: Any) -> None:
        self._fail(f"ERROR frame: {frame.headers.get('message', '')} {frame.body or ''}".strip())

    def on_disconnected(self) -> None:
        self._fail("connection lost")


class StompSender:
    """One STOMP connection to the broker's STOMP port; ``send`` returns once the request is receipted."""

    def __init__(self, settings: IngestSettings, *, timeout: float = 10.0) -> None:
        rabbit = settings.rabbitmq
        self.destination = f"/exchange/{settings.ingest.stomp_exchange}"
        self.timeout = timeout
        self.receipts = _Receipts()
        self.connection = stomp.Connection12(
            [(rabbit.host, rabbit.stomp_port)],
            vhost=rabbit.vhost,
            heartbeats=(0, 0),
            timeout=timeout,
            reconnect_attempts_max=1,  # the caller decides whether to try again
        )
        self.connection.set_listener("receipts", self.receipts)
        self._user, self._password = rabbit.user, rabbit.password.get_secret_value()
        self._next = 0

    def __enter__(self) -> StompSender:
        # stomp.py's own wait (connect(wait=True)) has no deadline: a broker that accepts the TCP connection and never
        # answers (one that hangs, or is still starting) would hold the caller forever. Ours is bounded by the timeout.
        try:
            self.connection.connect(self._user, self._password, wait=False)
        except (stomp.exception.StompException, OSError) as exc:  # stomp.py re-raises a failed send's socket error
            raise NotAcceptedError(f"STOMP connect failed: {type(exc).__name__} {self.receipts.failure}") from exc
        if not self.receipts.answered.wait(self.timeout) or not self.connection.is_connected():
            why = self.receipts.failure or f"no CONNECTED within {self.timeout:g} s"
            self.connection.transport.disconnect_socket()
            raise NotAcceptedError(f"STOMP connect failed: {why}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.connection.is_connected():
            with contextlib.suppress(stomp.exception.StompException, OSError):  # the broker may be gone already
                self.connection.disconnect()
                return
        self.connection.transport.disconnect_socket()  # ends the reader thread of a connection that was lost

    def send(self, numbers: Sequence[int], *, token: UUID | None = None) -> UUID:
        """SEND one request and wait for its RECEIPT; raises NotAcceptedError when none comes."""
        token = token or uuid7()
        self.send_frame(json.dumps(list(numbers)), {"token": str(token)})
        return token

    def send_frame(self, body: str, headers: dict[str, str]) -> None:
        """SEND any body with these headers (plus persistent and receipt) and wait for its RECEIPT."""
        self._next += 1
        receipt = f"orderly-{self._next}"
        arrived = self.receipts.expect(receipt)
        headers = {**headers, "persistent": "true", "receipt": receipt}
        try:
            self.connection.send(self.destination, body, content_type="application/json", headers=headers)
        except (stomp.exception.StompException, OSError) as exc:  # a broker gone mid-send: ConnectionResetError, ...
            raise NotAcceptedError(f"STOMP send failed: {type(exc).__name__}") from exc
        if not arrived.wait(self.timeout) or self.receipts.failure:
            raise NotAcceptedError(f"no RECEIPT for {headers.get('token')}: {self.receipts.failure or 'timed out'}")


def send_stomp(settings: IngestSettings, numbers: Sequence[int], *, timeout: float = 10.0) -> UUID:
    """Connect, SEND one request, wait for its RECEIPT, disconnect; the client's own token."""
    with StompSender(settings, timeout=timeout) as sender:
        return sender.send(numbers)
