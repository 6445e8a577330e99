from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from orderly.platform.settings import InfraSettings
from tests.plumbing import Namespace, Processes, RunningSystem, ScratchStack, ensure_stack_up


@pytest.fixture(scope="session")
def stack() -> InfraSettings:
    """The local stack is running (started when needed); its settings as the defaults see them."""
    ensure_stack_up()
    return InfraSettings()


@pytest.fixture(scope="session")
async def namespace(stack: InfraSettings) -> AsyncIterator[Namespace]:
    """This run's private namespaces on every server, dropped at the end of the run."""
    ns = Namespace(base=stack)
    yield ns
    await ns.drop_all()


@pytest.fixture(scope="session")
async def infra(namespace: Namespace) -> InfraSettings:
    """Settings pointing every client at this run's private databases, vhost, prefixes and topics."""
    return await namespace.settings()


@pytest.fixture
def scratch_stack(stack: InfraSettings) -> Iterator[Callable[..., ScratchStack]]:
    """Make private copies of servers on free ports (for restart and kill tests); all removed after the test."""
    made: list[ScratchStack] = []

    def make(name: str, *servers: str) -> ScratchStack:
        scratch = ScratchStack(name, list(servers))
        made.append(scratch)
        return scratch

    yield make
    for scratch in made:
        scratch.remove()


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Start ``orderly …`` processes for a test (``processes.start("ingest", "api", env=...)``); stopped after it."""
    spawned = Processes()
    yield spawned
    spawned.stop_all()


@pytest.fixture(scope="module")
def running_system(stack: InfraSettings) -> Iterator[RunningSystem]:
    """The whole system under `orderly up`, on a private stack and private ports, ready; stopped after the module."""
    system = RunningSystem()
    try:
        system.wait_ready()
        yield system
    finally:
        system.remove()
