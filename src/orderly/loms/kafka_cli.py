"""`orderly kafka status`: topics with partitions and offsets, consumer groups with members, assignments and lag."""

from __future__ import annotations

import typer

app = typer.Typer(help="Kafka: what the broker holds and who reads it.", no_args_is_help=True)


@app.command()
def status() -> None:
    """Print topics (partitions, offsets) and consumer groups (members, assignments, lag)."""
    from rich.console import Console
    from rich.table import Table

    from orderly.loms.kafka_admin import cluster_status
    from orderly.loms.settings import LomsSettings

    snapshot = cluster_status(LomsSettings().kafka)
    console = Console()
    topics = Table("topic", "partition", "low", "high", "messages", title="topics")
    for name, parts in snapshot["topics"].items():
        for p in parts:
            topics.add_row(name, str(p.partition), str(p.low), str(p.high), str(p.high - p.low))
    console.print(topics)
    groups = Table("group", "state", "member", "client", "assigned", title="consumer groups")
    lags = Table("group", "topic", "partition", "committed", "lag", title="consumer group lag")
    for group in snapshot["groups"]:
        if not group.members:
            groups.add_row(group.group_id, group.state, "-", "-", "-")
        for member in group.members:
            assigned = ", ".join(f"{t}[{p}]" for t, p in member.assignment) or "(idle)"
            groups.add_row(group.group_id, group.state, member.member_id, member.client_id, assigned)
        for (topic, partition), lag in sorted(group.lag.items()):
            committed = group.committed.get((topic, partition))
            lags.add_row(
                group.group_id,
                topic,
                str(partition),
                "-" if committed is None else str(committed),
                "-" if lag is None else str(lag),
            )
    console.print(groups)
    console.print(lags)
