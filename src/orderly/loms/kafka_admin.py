"""Kafka administration for loms: the idempotent topic init step and a status snapshot of topics and groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # type: ignore[attr-defined]

from orderly.loms.settings import EVENTS_PARTITIONS, REPLICATION_FACTOR, LomsSettings
from orderly.platform.pools import kafka_config
from orderly.platform.settings import KafkaSettings

TIMEOUT = 30.0


class TopicShapeMismatchError(Exception):
    """An existing topic has other partitions or replication than loms needs; refusing to guess."""


@dataclass(frozen=True)
class TopicShape:
    name: str
    partitions: int
    replication: int


def wanted_topics(settings: LomsSettings) -> list[TopicShape]:
    return [
        TopicShape(settings.events_topic(), EVENTS_PARTITIONS, REPLICATION_FACTOR),
        TopicShape(settings.dlq_topic(), 1, REPLICATION_FACTOR),
    ]


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(dict(kafka_config(settings, **{"client.id": "orderly-admin"})))


def existing_shape(admin: AdminClient, name: str) -> TopicShape | None:
    topic = admin.list_topics(topic=name, timeout=TIMEOUT).topics.get(name)
    if topic is None or topic.error is not None or not topic.partitions:
        return None
    replication = min(len(p.replicas) for p in topic.partitions.values())
    return TopicShape(name, len(topic.partitions), replication)


def init_topics(settings: LomsSettings) -> list[str]:
    """Create the missing topics; check the shape of existing ones. Returns the names created."""
    admin = admin_client(settings.kafka)
    created = []
    for want in wanted_topics(settings):
        have = existing_shape(admin, want.name)
        if have is None:
            future = admin.create_topics(
                [NewTopic(want.name, num_partitions=want.partitions, replication_factor=want.replication)],
                operation_timeout=TIMEOUT,
            )[want.name]
            try:
                future.result(timeout=TIMEOUT)
                created.append(want.name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                have = existing_shape(admin, want.name)  # a concurrent init won the race: check what it made
        if have is not None and have != want:
            raise TopicShapeMismatchError(
                f"topic {want.name} has {have.partitions} partitions and replication {have.replication}; "
                f"loms needs {want.partitions} and {want.replication} (delete or fix the topic by hand)"
            )
    return created


@dataclass
class PartitionStatus:
    partition: int
    low: int
    high: int


@dataclass
class MemberStatus:
    member_id: str
    client_id: str
    host: str
    assignment: list[tuple[str, int]]


@dataclass
class GroupStatus:
    group_id: str
    state: str
    members: list[MemberStatus] = field(default_factory=list)
    lag: dict[tuple[str, int], int | None] = field(default_factory=dict)  # (topic, partition) -> lag
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


def topic_offsets(admin: AdminClient, topic: str, partitions: int) -> list[PartitionStatus]:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    earliest, latest = OffsetSpec.earliest(), OffsetSpec.latest()  # type: ignore[no-untyped-call]
    low = admin.list_offsets(dict.fromkeys(tps, earliest), request_timeout=TIMEOUT)
    high = admin.list_offsets(dict.fromkeys(tps, latest), request_timeout=TIMEOUT)
    out = []
    for tp in tps:
        (lo_info,) = [f.result() for k, f in low.items() if k.partition == tp.partition]
        (hi_info,) = [f.result() for k, f in high.items() if k.partition == tp.partition]
        out.append(PartitionStatus(tp.partition, lo_info.offset, hi_info.offset))
    return out


def group_status(admin: AdminClient, group_id: str, high: dict[tuple[str, int], int]) -> GroupStatus:
    """Members, assignments, committed offsets and lag (high watermark minus committed) of one consumer group."""
    described = admin.describe_consumer_groups([group_id], request_timeout=TIMEOUT)[group_id].result()
    status = GroupStatus(group_id, str(described.state.name if described.state else "UNKNOWN"))
    for member in described.members:
        parts = [(tp.topic, tp.partition) for tp in (member.assignment.topic_partitions if member.assignment else [])]
        status.members.append(MemberStatus(member.member_id, member.client_id, member.host, sorted(parts)))
    request = [ConsumerGroupTopicPartitions(group_id)]
    offsets = admin.list_consumer_group_offsets(request, request_timeout=TIMEOUT)[group_id].result()
    for tp in offsets.topic_partitions:
        if tp.offset >= 0:
            status.committed[(tp.topic, tp.partition)] = tp.offset
    # Every partition of a topic the group reads or has read; no commit yet means the lag is unknown (None).
    topics = {t for t, _ in status.committed} | {t for m in status.members for t, _ in m.assignment}
    for key in sorted(k for k in high if k[0] in topics) or sorted(status.committed):
        committed, end = status.committed.get(key), high.get(key)
        status.lag[key] = None if committed is None or end is None else end - committed
    return status


def cluster_status(settings: KafkaSettings) -> dict[str, Any]:
    """A snapshot of every (non-internal) topic and every consumer group, for ``orderly kafka status``."""
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=TIMEOUT)
    topics: dict[str, list[PartitionStatus]] = {}
    high: dict[tuple[str, int], int] = {}
    for name in sorted(metadata.topics):
        if name.startswith("__"):
            continue
        parts = topic_offsets(admin, name, len(metadata.topics[name].partitions))
        topics[name] = parts
        high.update({(name, p.partition): p.high for p in parts})
    listing = admin.list_consumer_groups(request_timeout=TIMEOUT).result()
    groups = []
    for listed in sorted(listing.valid, key=lambda g: g.group_id):
        try:
            groups.append(group_status(admin, listed.group_id, high))
        except KafkaException as exc:  # a group that vanished or is mid-rebalance must not hide the others
            groups.append(GroupStatus(listed.group_id, f"ERROR {exc.args[0].str()}"))
    return {"topics": topics, "groups": groups}
