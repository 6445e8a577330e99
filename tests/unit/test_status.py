"""`orderly status`: pipeline figures from the processes' metrics, and a calm answer when nothing runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rich.console import Console

from orderly.platform.processes import ProcessSpec
from orderly.platform.settings import InfraSettings
from orderly.status import ServerStatus, pipeline_figures, render, snapshot
from tests.plumbing import free_port


def test_pipeline_figures_take_each_partitions_highest_report_and_count_throughput_between_readings() -> None:
    before = [
        ("orderly_batch_size_sum", {"service": "loms-relay"}, 1000.0),
        ("orderly_batch_size_sum", {"service": "sums-committer"}, 10.0),
        ("orderly_batch_size_sum", {"service": "sums-committer"}, 20.0),
    ]
    after = [
        ("orderly_batch_size_sum", {"service": "loms-relay"}, 3000.0),
        ("orderly_batch_size_sum", {"service": "sums-committer"}, 110.0),
        ("orderly_batch_size_sum", {"service": "sums-committer"}, 120.0),
        # three notifiers report the group's lag; partitions add up, members do not
        *(
            ("orderly_consumer_lag", {"service": "notifier", "partition": p}, lag)
            for p, lag in [("0", 5.0), ("1", 7.0)]
        ),
        *(
            ("orderly_consumer_lag", {"service": "notifier", "partition": p}, lag)
            for p, lag in [("0", 4.0), ("1", 7.0)]
        ),
        ("orderly_outbox_pending", {"service": "loms"}, 12.0),
        ("orderly_outbox_oldest_age_seconds", {"service": "loms"}, 0.5),
        ("orderly_dead_letters", {"service": "notifier"}, 2.0),
        ("orderly_dead_letters", {"service": "notifier"}, 2.0),
        ("orderly_queue_depth", {"service": "ingest"}, 40.0),
        ("orderly_daemon_lag_events", {"daemon": "default"}, 9.0),
    ]
    figures = pipeline_figures(before, after, 2.0)
    assert figures["loms"] == {
        "throughput_per_s": 1000.0,
        "consumer_lag": 12.0,
        "outbox_pending": 12.0,
        "outbox_oldest_age_s": 0.5,
        "dead_letters": 2.0,
    }
    assert figures["sums"] == {"throughput_per_s": 100.0}
    assert figures["ingest"] == {
        "throughput_per_s": None,  # no worker reported: unknown, not zero
        "queue_depth": 40.0,
        "daemon_lag_events": 9.0,
        "dead_letters": None,
    }


async def test_without_a_supervisor_or_processes_everything_shows_as_not_running() -> None:
    specs = [
        ProcessSpec("some-api", ("x",), http_port=free_port()),
        ProcessSpec("some-worker", ("y",), health_port=free_port()),
        ProcessSpec("some-init", ("z",), init=True),
    ]
    servers = [ServerStatus("prometheus", False, "2.42", 29090, "http://127.0.0.1:29090")]
    snap, _ = await snapshot(
        specs, InfraSettings(), supervisor_port=free_port(), read_servers=lambda _settings: servers
    )
    assert not snap.supervisor
    assert [(p.name, p.state, p.health) for p in snap.processes] == [
        ("some-api", "not running", "down"),
        ("some-worker", "not running", "down"),
    ]
    document = snap.to_json()
    assert document["servers"] == [
        {"name": "prometheus", "ready": False, "version": "2.42", "port": 29090, "url": "http://127.0.0.1:29090"}
    ]
    assert document["processes"][1]["metrics_url"] == f"http://127.0.0.1:{specs[1].health_port}/metrics"
    json.dumps(document)  # serialisable as it is
    console = Console(record=True, width=200)
    console.print(render(snap))
    text = console.export_text()
    assert "supervisor: not running" in text
    assert "some-worker" in text


def test_status_command_answers_with_json_even_when_nothing_runs() -> None:
    env_offset = str(free_port() % 5000 + 3000)  # ports where no `orderly up` runs
    done = subprocess.run(
        [sys.executable, "-m", "orderly", "status", "--json"],
        env={**os.environ, "ORDERLY_UP__PORT_OFFSET": env_offset},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert set(document) >= {"processes", "servers", "pipelines"}
    assert {p["name"] for p in document["processes"]} >= {"ingest-worker-1", "notifier-3", "sums-2"}
    assert any(s["name"] == "prometheus" for s in document["servers"])
