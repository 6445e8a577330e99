"""The notifier group against the real Kafka: takeover, redelivery after a crash, commits on shutdown, the DLQ."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from confluent_kafka import Producer

from orderly.loms.domain import Item, Order, OrderStatus, order_event
from orderly.loms.kafka_admin import admin_client, group_status
from orderly.platform.pools import kafka_config
from tests.loms_support import Loms, end_offsets, notifier_lines, prepare, produce_events, read_topic
from tests.plumbing import Namespace, Processes, Spawned, wait_until

S = OrderStatus


def make_events(first_order: int, orders: int) -> list[dict[str, Any]]:
    events = []
    for order_id in range(first_order, first_order + orders):
        order = Order(order_id, 1, S.NEW, (Item(1001, 1),))
        events += [order_event(order, S.NEW), order_event(order, S.AWAITING_PAYMENT)]
    return events


def ids(process: Spawned) -> set[str]:
    return {line["event_id"] for line in notifier_lines(process)}


def group(loms: Loms) -> Any:
    return group_status(admin_client(loms.settings.kafka), loms.settings.kafka.topic_prefix + "notifier", {})


def assigned_instances(loms: Loms) -> set[str]:
    return {m.client_id for m in group(loms).members if m.assignment}


@pytest.mark.slow
async def test_of_three_notifiers_two_get_partitions_and_the_idle_one_takes_over(
    namespace: Namespace, processes: Processes
) -> None:
    loms = await prepare(namespace, "takeover")
    members = {name: processes.start("notifier", "--instance", name, env=loms.env) for name in ("a", "b", "c")}

    def printed() -> set[str]:
        return set().union(*(ids(p) for p in members.values()))

    def settled() -> bool:
        status = group(loms)
        return status.state == "STABLE" and len(status.members) == 3 and len(assigned_instances(loms)) == 2

    await wait_until(settled, within=30, what="three members, two of them with a partition")
    holders = assigned_instances(loms)
    [idle] = set(members) - holders
    first = make_events(1, 100)
    await asyncio.to_thread(produce_events, loms.settings, first)
    await wait_until(lambda: printed() >= {e["event_id"] for e in first}, within=60, what="the first 200 events")
    assert not ids(members[idle]), "the member without a partition printed events"
    assert all(ids(members[h]) for h in holders)

    stopped = sorted(holders)[0]
    assert await asyncio.to_thread(members[stopped].stop) == 0
    await wait_until(lambda: idle in assigned_instances(loms), within=30, what=f"{idle} to take over")
    second = make_events(1001, 100)
    await asyncio.to_thread(produce_events, loms.settings, second)
    everything = {e["event_id"] for e in first + second}
    await wait_until(lambda: printed() >= everything, within=60, what="all 400 events after the takeover")
    assert ids(members[idle]), "the idle member printed nothing after taking over"


@pytest.mark.slow
async def test_kill_9_of_a_notifier_gets_its_uncommitted_events_delivered_again(
    namespace: Namespace, processes: Processes
) -> None:
    loms = await prepare(namespace, "crash")
    events = make_events(1, 30)
    await asyncio.to_thread(produce_events, loms.settings, events)
    wanted = {e["event_id"] for e in events}
    # A commit interval of an hour: nothing this member prints gets committed before it dies.
    crashed = processes.start("notifier", "--instance", "crashed", "--commit-interval-ms", "3600000", env=loms.env)
    await wait_until(lambda: ids(crashed) >= wanted, within=60, what="the first member to print everything")
    crashed.kill()
    survivor = processes.start("notifier", "--instance", "survivor", env=loms.env)
    await wait_until(lambda: ids(survivor) >= wanted, within=60, what="the uncommitted events delivered again")


@pytest.mark.slow
async def test_graceful_shutdown_commits_every_printed_offset(namespace: Namespace, processes: Processes) -> None:
    loms = await prepare(namespace, "graceful")
    events = make_events(1, 30)
    await asyncio.to_thread(produce_events, loms.settings, events)
    member = processes.start("notifier", "--instance", "g", "--commit-interval-ms", "3600000", env=loms.env)
    await wait_until(lambda: len(ids(member)) == 60, within=60, what="60 events printed")
    assert await asyncio.to_thread(member.stop) == 0
    printed_next = {}
    for line in notifier_lines(member):
        printed_next[line["partition"]] = max(printed_next.get(line["partition"], 0), line["offset"] + 1)
    assert group(loms).committed == {(loms.settings.events_topic(), p): o for p, o in printed_next.items()}
    assert printed_next == {p: o for p, o in end_offsets(loms.settings).items() if o}

    again = processes.start("notifier", "--instance", "g2", env=loms.env)
    marker = make_events(500, 1)
    await asyncio.to_thread(produce_events, loms.settings, marker)
    wanted = {e["event_id"] for e in marker}
    # Both marker events, not just the first: the second line may follow the first by a moment on a busy machine.
    await wait_until(lambda: ids(again) >= wanted, within=60, what="the next member to print the marker")
    assert ids(again) == wanted, "a committed event was delivered again"


@pytest.mark.slow
async def test_a_bad_message_is_retried_then_parked_in_the_dlq_and_the_partition_moves_on(
    namespace: Namespace, processes: Processes
) -> None:
    loms = await prepare(namespace, "dlq")
    producer = Producer(dict(kafka_config(loms.settings.kafka)))
    producer.produce(loms.settings.events_topic(), value=b"{not an event", key=b"1", partition=0)
    good = make_events(2, 1)
    for event in good:
        producer.produce(loms.settings.events_topic(), value=json.dumps(event).encode(), key=b"2", partition=0)
    assert producer.flush(30) == 0
    member = processes.start("notifier", "--instance", "d", "--max-attempts", "3", env=loms.env)
    await wait_until(lambda: ids(member) == {e["event_id"] for e in good}, within=60, what="the good events")
    failures = [json.loads(e) for e in member.errors if "event processing failed" in e]
    assert [(f["partition"], f["offset"], f["attempt"]) for f in failures] == [(0, 0, 1), (0, 0, 2), (0, 0, 3)]
    [parked] = await asyncio.to_thread(read_topic, loms.settings, expect=1, timeout=30, topic=loms.settings.dlq_topic())
    assert parked.value() == b"{not an event"
    headers = dict(parked.headers())
    assert headers["source.partition"] == b"0"
    assert headers["source.offset"] == b"0"
