"""Dead letters of the notifier: events it could not print are parked, counted, and printed once after replay."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from orderly.notifier.consumer import Notifier
from orderly.notifier.deadletters import DeadLetterCounter
from orderly.notifier.settings import NotifierOptions, NotifierSettings
from orderly.platform.lifecycle import Shutdown
from orderly.platform.pools import kafka_config
from tests.e2e.notifier.test_notifier import ids, make_events
from tests.loms_support import Loms, notifier_lines, prepare, produce_events
from tests.plumbing import Namespace, Processes, dead_letters_listed, orderly_dlq, wait_until

pytestmark = pytest.mark.slow


def settings_of(loms: Loms) -> NotifierSettings:
    options = NotifierOptions(
        instance="parker",
        max_attempts=2,
        backoff_seconds=0.05,
        backoff_max_seconds=0.1,
        dead_letters_refresh_seconds=0.2,
    )
    return NotifierSettings(kafka=loms.settings.kafka, notifier=options)


@asynccontextmanager
async def notifier_in_process(loms: Loms, out: TextIO) -> AsyncIterator[Notifier]:
    """A notifier member in this process (its metrics are this process's registry); drained on exit."""
    notifier, shutdown = Notifier(settings_of(loms), out=out), Shutdown()
    task = asyncio.create_task(notifier.run(shutdown))
    try:
        yield notifier
    finally:
        shutdown.request("test done")
        await task


def dead_letters_metric() -> float | None:
    return REGISTRY.get_sample_value("orderly_dead_letters", {"service": "notifier"})


def dlq(loms: Loms, *args: str) -> subprocess.CompletedProcess[str]:
    return orderly_dlq(loms.env, *args)


def listed(loms: Loms) -> list[dict[str, Any]]:
    return dead_letters_listed(loms.env, "notifier")


def waiting(loms: Loms) -> int:
    counter = DeadLetterCounter(settings_of(loms))
    try:
        return counter.count()
    finally:
        counter.close()


async def test_events_the_notifier_could_not_print_are_parked_counted_and_printed_once_after_replay(
    namespace: Namespace, processes: Processes
) -> None:
    loms = await prepare(namespace, "notifierdlq")
    events = make_events(1, 1)  # order 1: new, awaiting payment
    await asyncio.to_thread(produce_events, loms.settings, events)
    # stdout on a full disk: every write fails with ENOSPC, so both events are parked after their attempts.
    full = open("/dev/full", "w")  # noqa: ASYNC230, SIM115 - a device; closed below, where its flush fails too
    try:
        async with notifier_in_process(loms, full):
            await wait_until(lambda: dead_letters_metric() == 2, within=60, what="two dead letters counted")
    finally:
        with contextlib.suppress(OSError):
            full.close()
    letters = listed(loms)
    assert [json.loads(x["payload"])["event_id"] for x in letters] == [e["event_id"] for e in events]
    assert all("No space left on device" in x["reason"] for x in letters)
    assert all(x["source"] == loms.settings.events_topic() for x in letters)
    shown = dlq(loms, "show", "notifier", letters[0]["id"])
    assert shown.returncode == 0, shown.stderr
    assert "No space left on device" in shown.stdout
    assert "partition" in shown.stdout

    # The disk has room again: a member that prints, then the replay.
    member = processes.start("notifier", "--instance", "after", env=loms.env)
    replayed = dlq(loms, "replay", "notifier", "--all")
    assert replayed.returncode == 0, replayed.stderr
    wanted = {e["event_id"] for e in events}
    await wait_until(lambda: ids(member) == wanted, within=60, what="the replayed events printed")
    lines = notifier_lines(member)
    assert [line["status"] for line in lines] == [e["status"] for e in events], "replayed in their order"
    assert all(line["replayed"] for line in lines)
    assert listed(loms) == []
    assert await asyncio.to_thread(waiting, loms) == 0

    again = dlq(loms, "replay", "notifier", letters[0]["id"])
    assert again.returncode == 0, again.stderr
    assert "replayed before" in again.stdout
    assert dlq(loms, "replay", "notifier", "--all").returncode == 0
    marker = make_events(9, 1)[:1]
    await asyncio.to_thread(produce_events, loms.settings, marker)
    await wait_until(lambda: marker[0]["event_id"] in ids(member), within=60, what="an event after the replays")
    printed = [line["event_id"] for line in notifier_lines(member)]
    assert sorted(printed) == sorted([*wanted, marker[0]["event_id"]]), "a replayed event was printed twice"


async def test_an_unparsable_event_is_parked_and_its_replay_is_refused(namespace: Namespace) -> None:
    loms = await prepare(namespace, "notifierbad")
    producer = Producer(dict(kafka_config(loms.settings.kafka)))
    producer.produce(loms.settings.events_topic(), value=b"{not an event", key=b"1")
    assert producer.flush(30) == 0
    async with notifier_in_process(loms, io.StringIO()):
        await wait_until(lambda: dead_letters_metric() == 1, within=60, what="the dead letter counted")
    [letter] = listed(loms)
    assert "not JSON" in letter["reason"]
    refused = dlq(loms, "replay", "notifier", letter["id"])
    assert refused.returncode == 1
    assert "stays" in refused.stderr
    assert [x["id"] for x in listed(loms)] == [letter["id"]]
