"""compose.yaml is valid and runs the same processes as the local runner (`orderly up`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from orderly.platform.processes import HEALTH_PORTS
from orderly.runner import all_processes
from orderly.stack.scrape import rules_text

ROOT = Path(__file__).resolve().parents[2]
PER_INSTANCE_FLAGS = {
    "--port",
    "--instance",
    "--log-file",
    "--health-port",
}  # differ per copy or per runner, not per process kind


def process_kind(args: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    kind, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in PER_INSTANCE_FLAGS:
            skip = True
        else:
            kind.append(arg)
    return tuple(kind)


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def test_compose_file_is_valid_for_docker_compose() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (Debian package) is installed by `make setup`"
    done = subprocess.run(
        [binary, "-f", "compose.yaml", "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_compose_and_the_local_runner_start_the_same_processes() -> None:
    services = compose()["services"]
    from_compose: Counter[tuple[str, ...]] = Counter()
    for service in services.values():
        if service.get("image") == "orderly:local" and service["command"] != ["init"]:
            from_compose[process_kind(service["command"])] += service.get("deploy", {}).get("replicas", 1)
    local = Counter(process_kind(spec.args) for spec in all_processes() if not spec.init)
    assert from_compose == local
    assert local, "the runner lists the services' processes"


def test_compose_runs_every_init_step_before_any_service() -> None:
    services = compose()["services"]
    assert services["init"]["command"] == ["init"]
    for name, service in services.items():
        if service.get("image") == "orderly:local" and name != "init":
            assert service["depends_on"]["init"]["condition"] == "service_completed_successfully", name


def test_composes_redis_evicts_only_keys_with_a_ttl_like_the_local_stacks() -> None:
    from orderly.stack.servers import REDIS_MAXMEMORY, REDIS_MAXMEMORY_POLICY

    command = compose()["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == REDIS_MAXMEMORY_POLICY == "volatile-lru"
    assert command[command.index("--maxmemory") + 1] == REDIS_MAXMEMORY


def _flag(command: list[str], flag: str) -> int | None:
    return int(command[command.index(flag) + 1]) if flag in command else None


def _orderly_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image") == "orderly:local" and name != "init"
    }


def test_compose_prometheus_scrapes_every_service_process_on_its_probe_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["honor_labels"] is True
    scraped = {sd["names"][0]: sd["port"] for sd in job["dns_sd_configs"]}
    expected = {}
    for name, service in _orderly_services().items():
        port = _flag(service["command"], "--port") or _flag(service["command"], "--health-port")
        assert port, f"{name} serves no probes"
        expected[name] = port
    assert scraped == expected
    # the same health ports as the local runner (the first instance's, for replicated services)
    background = {process_kind(spec.args): spec.health_port for spec in reversed(all_processes()) if spec.health_port}
    for service in _orderly_services().values():
        if (health := _flag(service["command"], "--health-port")) is not None:
            assert health == background[process_kind(service["command"])]
            assert health in HEALTH_PORTS.values()


def test_compose_prometheus_config_and_its_rules_pass_promtool(tmp_path: Path) -> None:
    binary = shutil.which("promtool")
    assert binary, "promtool comes with the prometheus Debian package, installed by `make setup`"
    shutil.copy(ROOT / "deploy" / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "rules.yml").write_text(rules_text())
    done = subprocess.run(
        [binary, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./src/orderly/stack/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in mounts


def test_prometheus_and_grafana_are_pinned_and_listen_on_loopback_only() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name} is not pinned to a version: {image}"
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name


def test_grafana_dashboard_has_one_row_per_pipeline_with_the_five_figures() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "orderly-pipelines.json").read_text())
    datasource = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = datasource["datasources"][0]["uid"]
    rows: dict[str, list[dict[str, Any]]] = {}
    current = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = []
        else:
            rows[current].append(panel)
    assert list(rows) == ["ingest", "sums", "items", "loms + notifier"]
    for title, panels in rows.items():
        kinds = [panel["title"].split(": ", 1)[1] for panel in panels]
        assert [k.split(" ")[0] for k in kinds][:2] == ["throughput", "p99"], title
        assert len(panels) == 5, title
        for panel in panels:
            assert panel["datasource"]["uid"] == uid
            for target in panel["targets"]:
                names = set(re.findall(r"\b(orderly_[a-z_]+|http_[a-z_]+)", target["expr"]))
                assert names, target["expr"]
    for pipeline in ("items", "loms + notifier"):
        titles = [panel["title"] for panel in rows[pipeline]]
        assert any("lag" in t for t in titles)
        assert any("outbox age" in t for t in titles)
        assert any("dead letters" in t for t in titles)
