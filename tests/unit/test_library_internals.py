"""Tripwires: the library internals our code relies on are still there and still behave as we use them.

Each test fails when an upgrade within the ranges declared in pyproject.toml changes one of them, before production
does. When one fails: read the library's change, adapt the code that names it (given in each test), then the test.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import aiormq
import pamqp.frame
import pytest
from aiormq.abc import AbstractFutureStore, ChannelFrame
from aiormq.base import FutureStore
from granian import Granian
from granian.constants import Interfaces
from granian.server.embed import Server
from honcho.colour import get_colours
from honcho.printer import Message
from uuid_utils.compat import uuid7

from orderly.ingest.broker import Publisher
from orderly.ingest.domain import AcceptedRequest, BrokerUnavailableError


def test_granians_embedded_server_takes_what_sums_single_process_serving_passes() -> None:
    # orderly.sums.cli.serve_in_process: Server(target, factory=, address=, port=, interface=, log_enabled=,
    # backlog=), ``await server.serve()``, ``server.stop`` as the signal handler, ``server.interrupt_children``
    # (non-empty when the worker ended on its own) for the exit code.
    parameters = inspect.signature(Server.__init__).parameters
    assert {"target", "factory", "address", "port", "interface", "log_enabled", "backlog"} <= set(parameters)
    assert inspect.iscoroutinefunction(Server.serve)
    assert callable(Server.stop)

    async def app(_scope: object, _receive: object, _send: object) -> None:
        raise AssertionError("never served")

    server = Server(app, address="127.0.0.1", port=1, interface=Interfaces.ASGI, log_enabled=False, backlog=16)
    assert server.interrupt_children == []


def test_granian_still_calls_a_target_loader_with_the_target_in_each_worker() -> None:
    # orderly.platform.http.serve passes ``target_loader=load_app_in_worker``, which ties each worker to its main
    # process (PR_SET_PDEATHSIG) before building the app; granian must call it with the target string, unwrapped.
    parameters = inspect.signature(Granian.serve).parameters
    assert "target_loader" in parameters
    assert parameters["wrap_loader"].default is True


def test_honchos_printer_message_and_colours_are_what_orderly_up_prints_with() -> None:
    # orderly.runner.TeePrinter prints honcho ``Message`` tuples with honcho's colours (tests/unit/test_runner.py
    # checks the printed lines).
    assert Message._fields == ("type", "data", "time", "name", "colour")
    assert all(isinstance(colour, str) for colour, _ in zip(get_colours(), range(20), strict=False))


# aiormq + pamqp: orderly.ingest.broker.Publisher writes Basic.Publish + ContentHeader + body frames itself
# (``ChannelFrame.marshall``, ``channel._split_body``, ``channel.write_queue``) under the channel's ``lock`` and
# registers one confirmation per delivery tag in aiormq's own tables (``delivery_tag``, ``confirmations``,
# ``message_id_delivery_tag``, ``create_future``), which aiormq's frame reader then resolves. A hand-built A/B showed
# this path 1.8x faster than the public ``basic_publish`` (docs/ingest.md), so these internals are kept, and watched.


class WriteQueue(asyncio.Queue[ChannelFrame]):
    """The connection's write queue, telling when something was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def put_nowait(self, item: ChannelFrame) -> None:
        super().put_nowait(item)
        self.written.set()


class FakeConnector:
    """What ``aiormq.Channel.__init__`` reads from its connection, with no socket behind it."""

    publisher_confirms = True

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.connection_tune = SimpleNamespace(frame_max=131072)
        self.write_queue = WriteQueue()
        self._store = FutureStore(loop=self.loop)

    def _future_store_child(self) -> AbstractFutureStore:
        return self._store.get_child()

    async def close(self) -> None:
        """Stop what the channel started (its frame reader), as a closing connection does."""
        await self._store.reject_all(ConnectionError("closed"))


class UnderlayOnly:
    """The aio-pika channel as the publisher uses it: open, and its aiormq channel."""

    is_closed = False

    def __init__(self, channel: aiormq.Channel) -> None:
        self.channel = channel

    async def get_underlay_channel(self) -> aiormq.Channel:
        return self.channel


def accepted(i: int) -> AcceptedRequest:
    return AcceptedRequest(token=uuid7(), numbers=(i,), accepted_at=datetime.now(UTC))


def written_frames(connector: FakeConnector) -> list[Any]:
    frames = []
    while not connector.write_queue.empty():
        payload = connector.write_queue.get_nowait().payload
        while payload:
            consumed, _channel, frame = pamqp.frame.unmarshal(payload)
            frames.append(frame)
            payload = payload[consumed:]
    return frames


async def test_aiormq_resolves_the_confirmations_the_publisher_registers_on_a_multiple_ack() -> None:
    connector = FakeConnector()
    channel = aiormq.Channel(connector, number=1, publisher_confirms=True, on_return_raises=True)  # type: ignore[arg-type]
    publisher = Publisher(UnderlayOnly(channel), queue="q", timeout=5)  # type: ignore[arg-type]
    requests = [accepted(i) for i in range(3)]
    publishes = [asyncio.create_task(publisher.publish(r)) for r in requests]
    await asyncio.wait_for(connector.write_queue.written.wait(), 5)  # one flush wrote all three
    assert list(channel.confirmations) == [1, 2, 3]
    assert channel.message_id_delivery_tag == {str(r.token): tag for tag, r in enumerate(requests, 1)}
    frames = written_frames(connector)
    assert [type(f).__name__ for f in frames] == ["Publish", "ContentHeader", "ContentBody"] * 3
    assert [f.routing_key for f in frames[::3]] == ["q"] * 3
    assert all(f.mandatory for f in frames[::3])
    assert [f.properties.message_id for f in frames[1::3]] == [str(r.token) for r in requests]
    assert [f.properties.delivery_mode for f in frames[1::3]] == [2] * 3
    assert [AcceptedRequest.from_message(f.value) for f in frames[2::3]] == requests

    await channel._on_confirm_frame(aiormq.spec.Basic.Ack(delivery_tag=3, multiple=True))
    await asyncio.wait_for(asyncio.gather(*publishes), 5)
    assert not channel.confirmations
    assert not channel.message_id_delivery_tag
    await connector.close()


async def test_aiormq_fails_the_confirmation_of_a_returned_message_by_its_message_id() -> None:
    connector = FakeConnector()
    channel = aiormq.Channel(connector, number=1, publisher_confirms=True, on_return_raises=True)  # type: ignore[arg-type]
    publisher = Publisher(UnderlayOnly(channel), queue="nowhere", timeout=5)  # type: ignore[arg-type]
    publish = asyncio.create_task(publisher.publish(accepted(1)))
    await asyncio.wait_for(connector.write_queue.written.wait(), 5)
    _publish, header, body = written_frames(connector)
    for frame in (header, body):
        channel.frames.put_nowait((0, frame))
    await channel._on_return_frame(aiormq.spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key="q"))
    with pytest.raises(BrokerUnavailableError, match="PublishError"):
        await asyncio.wait_for(publish, 5)
    await connector.close()


async def test_a_failed_rabbitmq_connect_writes_only_lines_the_repeated_attempt_filter_knows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # orderly.platform.logging.RECONNECT_ATTEMPT_LINES: matched by logger name and format string.
    import aio_pika
    import aio_pika.robust_connection

    from orderly.platform.logging import RECONNECT_ATTEMPT_LINES
    from tests.plumbing import free_port

    port = free_port()

    async def connect() -> None:
        await aio_pika.connect_robust(f"amqp://guest:guest@127.0.0.1:{port}/")

    # On a loop of its own, closed when the attempt ends: the failed connection (kept alive by its traceback in the
    # captured records) is collected later, and aio-pika's __del__ then sees a closed loop and schedules nothing.
    # On this test's loop, its close() was created outside any running loop, never awaited, and pytest failed a
    # later test for it.
    with caplog.at_level("WARNING"), pytest.raises(aiormq.exceptions.AMQPConnectionError):
        await asyncio.to_thread(asyncio.run, connect())
    library = [(r.name, r.msg) for r in caplog.records if r.name.startswith(("aiormq", "aio_pika"))]
    assert library, "a failed connect wrote no line at all: the filter may be obsolete"
    assert set(library) <= RECONNECT_ATTEMPT_LINES

    # The robust connection's reconnect lines need a broker that went away; their format strings are in its code.
    def constants(code: types.CodeType) -> set[str]:
        found = {c for c in code.co_consts if isinstance(c, str)}
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                found |= constants(c)
        return found

    robust = set[str]().union(
        *(constants(f.__code__) for _, f in inspect.getmembers(aio_pika.robust_connection.RobustConnection,
                                                               inspect.isfunction))
    )  # fmt: skip
    for name, line in RECONNECT_ATTEMPT_LINES:
        if name == "aio_pika.robust_connection":
            assert line in robust, line
