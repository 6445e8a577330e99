"""compose.yaml is valid, safe on a laptop, runs what the tests cover, and runs the same processes as `orderly up`.

No Docker engine runs here, so these checks are static: `docker-compose config`, then the file itself — pinned images,
loopback-only ports, a healthcheck on every service (each process's own /healthz), grace periods longer than the
drain, development-only passwords marked as such, and the server versions of the local stack.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from orderly.platform.processes import HEALTH_PORTS
from orderly.runner import DRAIN_SECONDS, all_processes
from orderly.stack.base import debian_version
from orderly.stack.scrape import rules_text
from tests.unit.deploy_support import ROOT, flag, local_counts, probe_ports, process_kind

ORDERLY_IMAGE = "orderly:local"  # built from the Dockerfile by compose itself
UNPINNED_TAGS = {"latest", "main", "master", "stable", "edge", "nightly"}
# compose service → the Debian package the local stack runs and every test uses, and how many leading version
# components must match (a release series: PostgreSQL's is its major version, the others' major.minor).
TESTED_SERVERS = {
    "postgres": ("postgresql-15", 1),
    "mysql": ("mariadb-server", 2),
    "redis": ("redis-server", 2),
    "rabbitmq": ("rabbitmq-server", 2),
    "nats": ("nats-server", 2),
}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]  # type: ignore[no-any-return]


def orderly_processes() -> dict[str, dict[str, Any]]:
    """The long-running orderly services (not the init step)."""
    return {n: s for n, s in services().items() if s.get("image") == ORDERLY_IMAGE and s["command"] != ["init"]}


def tag_of(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return tag if name and "/" not in tag else ""


def upstream(debian: str) -> str:
    """'1:10.11.19-0+deb12u1' → '10.11.19'."""
    return debian.split(":", 1)[-1].split("-", 1)[0].split("+", 1)[0]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert duration, "an empty duration"
    assert match, f"unparsed duration {duration!r}"
    return int(match[1] or 0) * 60 + float(match[2] or 0)


def test_compose_file_is_valid_for_docker_compose() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (Debian package) is installed by `make setup`"
    done = subprocess.run(
        [binary, "-f", "compose.yaml", "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in services().items():
        image = service["image"]
        if image == ORDERLY_IMAGE:
            assert "build" in service, f"{name} uses the local image, so compose must build it"
            continue
        tag = tag_of(image)
        assert tag, f"{name}: {image} has no tag"
        assert tag.split("-")[0] not in UNPINNED_TAGS, f"{name}: {image} floats"
        assert re.match(r"v?\d+\.\d+", tag), f"{name}: {image} names no version"


def test_every_published_port_is_on_loopback_only() -> None:
    published = 0
    for name, service in services().items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} would listen on every interface"
    assert published, "the APIs are published"


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        if service.get("command") == ["init"]:
            continue
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"


def test_each_orderly_process_is_checked_on_its_own_healthz_port() -> None:
    ports = probe_ports()
    for name, service in orderly_processes().items():
        command = service["command"]
        kind = process_kind(command)
        test = " ".join(service["healthcheck"]["test"])
        found = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", test)
        assert found, f"{name}: the healthcheck must GET its /healthz: {test}"
        port = int(found[1])
        assert port in ports[kind], f"{name}: {port} is not in the port contract for {kind}: {ports[kind]}"
        served = flag(command, "--port") or flag(command, "--health-port")
        assert served == str(port), f"{name} serves on {served} but is checked on {port}"


def test_each_orderly_process_gets_longer_than_its_drain_to_stop() -> None:
    for name, service in orderly_processes().items():
        grace = seconds(service.get("stop_grace_period", "10s"))  # compose's default is 10 s
        assert grace >= DRAIN_SECONDS, f"{name}: {grace} s < the {DRAIN_SECONDS} s drain of `orderly up`"


def test_every_password_is_marked_development_only() -> None:
    lines = (ROOT / "compose.yaml").read_text().splitlines()
    secrets = [line for line in lines if re.search(r"(PASSWORD|_PASS)\b[^:]*:\s*\S|--password", line)]
    assert len(secrets) >= 6, "every server has a password"
    for line in secrets:
        assert "development-only" in line, f"mark it: {line.strip()}"


@pytest.mark.parametrize("service", sorted(TESTED_SERVERS))
def test_compose_runs_the_server_release_series_the_tests_use(service: str) -> None:
    package, parts = TESTED_SERVERS[service]
    installed = debian_version(package)
    assert installed != "not installed", f"{package} is installed by `make setup`"
    tag = tag_of(services()[service]["image"]).split("-")[0]
    assert tag.split(".")[:parts] == upstream(installed).split(".")[:parts], (service, tag, installed)


def test_compose_runs_the_kafka_release_the_stack_resolves() -> None:
    pom = (ROOT / "stack" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert found
    assert services()["kafka"]["image"] == f"apache/kafka:{found[1]}"


def test_compose_runs_mariadb_whose_default_authentication_needs_no_extra_package() -> None:
    # asyncmy finishes MySQL 8's caching_sha2_password over TCP only with `cryptography`, which is not installed.
    assert services()["mysql"]["image"].startswith("mariadb:")


def test_compose_and_the_local_runner_start_the_same_processes() -> None:
    from_compose: Counter[tuple[str, ...]] = Counter()
    for service in orderly_processes().values():
        from_compose[process_kind(service["command"])] += service.get("deploy", {}).get("replicas", 1)
    local = local_counts()
    assert from_compose == local
    assert local, "the runner lists the services' processes"


def test_compose_runs_every_init_step_before_any_service() -> None:
    all_services = services()
    assert all_services["init"]["command"] == ["init"]
    for name, service in all_services.items():
        if service.get("image") == ORDERLY_IMAGE and name != "init":
            assert service["depends_on"]["init"]["condition"] == "service_completed_successfully", name


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
