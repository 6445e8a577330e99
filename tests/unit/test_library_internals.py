"""Tripwires: the library internals our code relies on are still there and still behave as we use them.

Each test fails when an upgrade within the ranges declared in pyproject.toml changes one of them, before production
does. When one fails: read the library's change, adapt the code that names it (given in each test), then the test.
"""

from __future__ import annotations

import inspect

from granian.constants import Interfaces
from granian.server.embed import Server


def test_granians_embedded_server_takes_what_sums_single_process_serving_passes() -> None:
    # orderly.sums.cli._serve_in_process: Server(target, factory=, address=, port=, interface=, log_enabled=,
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
