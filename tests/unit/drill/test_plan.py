"""The drill's fault plan: every kind of process killed (active and standby where there are both), each server once."""

from __future__ import annotations

from pathlib import Path

from orderly.drill.faults import Kill, LocalFaults, Restart, rounds
from orderly.drill.pipeline import Target
from orderly.drill.run import PIPELINES
from orderly.runner import all_processes
from orderly.stack.manager import Stack


def plan(tmp_path: Path, names: list[str]) -> list[Kill | Restart]:
    target = Target([spec for spec in all_processes() if not spec.init], tmp_path)
    pipelines = [cls(target, tag="t") for cls in PIPELINES if cls.name in names]
    return LocalFaults(Stack(root=tmp_path), target).plan(pipelines)


def test_every_kind_of_process_is_killed_with_active_and_standby_where_a_kind_has_both(tmp_path: Path) -> None:
    kills = [f for f in plan(tmp_path, ["ingest", "sums", "items", "loms"]) if isinstance(f, Kill)]
    titles = sorted(k.title for k in kills)
    assert "kill -9 ingest-worker (active)" in titles
    assert "kill -9 ingest-worker (standby)" in titles
    assert "kill -9 notifier (active)" in titles
    assert "kill -9 notifier (standby)" in titles
    assert titles.count("kill -9 sums") == 1  # three equal instances: one kind
    for kind in ("ingest-api", "ingest-daemon", "items-api", "items-relay", "items-audit", "loms-api"):
        assert f"kill -9 {kind}" in titles
    assert {k.kind for k in kills[:4]} == {"ingest-api", "sums", "items-api", "loms-api"}, "pipelines take turns"


def test_each_server_is_restarted_once_and_counts_for_every_pipeline_that_uses_it(tmp_path: Path) -> None:
    restarts = {f.server: f for f in plan(tmp_path, ["ingest", "sums", "items", "loms"]) if isinstance(f, Restart)}
    assert sorted(restarts) == sorted(["postgres", "mariadb", "redis", "rabbitmq", "nats", "clickhouse", "kafka"])
    assert restarts["postgres"].pipelines == ("ingest", "items", "loms")
    assert restarts["redis"].pipelines == ("sums", "items")
    assert restarts["kafka"].pipelines == ("loms",)


def test_a_chosen_pipeline_gets_only_its_own_faults(tmp_path: Path) -> None:
    faults = plan(tmp_path, ["sums"])
    assert [f.title for f in faults] == ["kill -9 sums", "restart mariadb", "restart redis"]


def test_pipelines_meet_their_faults_side_by_side_but_one_at_a_time_each_in_plan_order(tmp_path: Path) -> None:
    faults = plan(tmp_path, ["ingest", "sums", "items", "loms"])
    grouped = rounds(faults)
    assert sorted(f.title for group in grouped for f in group) == sorted(f.title for f in faults)
    for group in grouped:
        touched = [p for fault in group for p in fault.pipelines]
        assert len(touched) == len(set(touched)), f"a pipeline meets two faults at once: {group}"
    for pipeline in ("ingest", "sums", "items", "loms"):
        mine = [f for f in faults if pipeline in f.pipelines]
        in_rounds = [f for group in grouped for f in group if pipeline in f.pipelines]
        assert in_rounds == mine, f"{pipeline}'s faults out of plan order"
    postgres = next(i for i, g in enumerate(grouped) for f in g if f.title == "restart postgres")
    loms_kills = [i for i, g in enumerate(grouped) for f in g if isinstance(f, Kill) and f.pipeline == "loms"]
    assert postgres > max(loms_kills), "a shared server waits for every pipeline that uses it"
    assert len(grouped) < len(faults)
