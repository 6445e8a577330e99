"""The Kubernetes manifests render, validate against the Kubernetes schemas, and run what `orderly up` runs.

Each overlay is rendered with kustomize (built by `make setup`) and every object validated offline, strictly (unknown
fields fail), with kubernetes-validate against the oldest and the newest Kubernetes release we claim. Then the
rendered objects are held to the design: the same process kinds as `orderly up` and compose.yaml, the replica rule of
each kind, probes on each process's own port, grace periods longer than the drain, a PodDisruptionBudget per
Deployment, autoscalers for the stateless APIs only, and resources no smaller than the measured footprint.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from enum import Enum
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from orderly.cli import app
from orderly.platform import settings as settings_module
from orderly.runner import DRAIN_SECONDS
from tests.unit.deploy_support import ROOT, Kind, flag, is_api, local_counts, probe_ports, process_kind

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSIONS = ["1.31.0", "1.37.0"]  # docs/deploy.md: the oldest release we claim, and the newest schema


class Rule(Enum):
    SAME = "same"  # exactly as many as `orderly up` runs (their count is part of the design)
    EXACTLY_ONE = "exactly-one"  # one, and never two at once (Recreate)
    ACTIVE_STANDBY = "active-standby"  # as `orderly up`: one active, one hot standby
    PLUS_STANDBY = "plus-standby"  # `orderly up` runs the single active one; a cluster adds a standby for a node loss
    AUTOSCALED = "autoscaled"  # stateless: an autoscaler, never fewer than `orderly up` runs nor fewer than two


RULES: dict[Kind, Rule] = {
    ("ingest", "api"): Rule.AUTOSCALED,
    ("ingest", "worker"): Rule.ACTIVE_STANDBY,
    ("ingest", "daemon"): Rule.EXACTLY_ONE,
    ("sums", "api"): Rule.AUTOSCALED,
    ("items", "api"): Rule.AUTOSCALED,
    ("items", "relay"): Rule.PLUS_STANDBY,
    ("items", "audit"): Rule.EXACTLY_ONE,
    ("loms", "api"): Rule.AUTOSCALED,
    ("loms", "relay"): Rule.PLUS_STANDBY,
    ("notifier",): Rule.SAME,
}

# Where bench/results/footprint.json names each kind's processes.
FOOTPRINT_NAMES: dict[Kind, re.Pattern[str]] = {
    ("ingest", "api"): re.compile(r"ingest-api"),
    ("ingest", "worker"): re.compile(r"ingest-worker-\d"),
    ("ingest", "daemon"): re.compile(r"ingest-daemon"),
    ("sums", "api"): re.compile(r"sums-\d"),
    ("items", "api"): re.compile(r"items-api"),
    ("items", "relay"): re.compile(r"items-relay"),
    ("items", "audit"): re.compile(r"items-audit"),
    ("loms", "api"): re.compile(r"loms-api"),
    ("loms", "relay"): re.compile(r"loms-relay"),
    ("notifier",): re.compile(r"notifier-\d"),
}


def kustomize() -> str:
    binary = ROOT / ".stack" / "bin" / "kustomize"
    found = str(binary) if binary.exists() else shutil.which("kustomize")
    assert found, "kustomize is built by `make setup` (scripts/setup.sh) into .stack/bin"
    return found


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [kustomize(), "build", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered(overlay) if doc["kind"] == kind]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def deployments(overlay: str) -> dict[Kind, dict[str, Any]]:
    found: dict[Kind, dict[str, Any]] = {}
    for deployment in of_kind(overlay, "Deployment"):
        kind = process_kind(container(deployment)["args"])
        assert kind not in found, f"two Deployments run {kind}"
        found[kind] = deployment
    return found


def hpas(overlay: str) -> dict[str, dict[str, Any]]:
    return {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in of_kind(overlay, "HorizontalPodAutoscaler")}


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", quantity)
    assert match, f"write memory in Ki, Mi or Gi: {quantity}"
    return float(match[1]) * units[match[2]]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_for_kubernetes(overlay: str, version: str) -> None:
    objects = rendered(overlay)
    assert len(objects) > 20
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_run_the_same_process_kinds_as_orderly_up(overlay: str) -> None:
    assert set(deployments(overlay)) == set(local_counts()) == set(RULES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_kind_runs_as_many_copies_as_its_replica_rule_says(overlay: str) -> None:
    local, autoscalers = local_counts(), hpas(overlay)
    for kind, deployment in deployments(overlay).items():
        rule, name, spec = RULES[kind], deployment["metadata"]["name"], deployment["spec"]
        assert deployment["metadata"]["annotations"]["orderly.dev/replicas"] == rule.value, name
        if rule is Rule.AUTOSCALED:
            assert "replicas" not in spec, f"{name}: the autoscaler owns the replica count"
            assert autoscalers[name]["spec"]["minReplicas"] >= max(local[kind], 2), name
            continue
        assert name not in autoscalers, f"{name} must not be autoscaled ({rule.value})"
        expected = {
            Rule.SAME: local[kind],
            Rule.ACTIVE_STANDBY: local[kind],
            Rule.EXACTLY_ONE: 1,
            Rule.PLUS_STANDBY: local[kind] + 1,
        }[rule]
        assert spec["replicas"] == expected, name
        if rule is Rule.EXACTLY_ONE:
            assert local[kind] == 1, f"`orderly up` must run one {kind} too"
        if kind == ("ingest", "daemon"):
            assert spec["strategy"]["type"] == "Recreate", "two daemons would both print every event"
        if rule is Rule.ACTIVE_STANDBY:
            assert local[kind] == 2, "`orderly up` runs the active one and its standby"


def test_the_replica_rules_of_compose_and_orderly_up_agree() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    counts: Counter[Kind] = Counter()
    for service in compose.values():
        if service.get("image") == "orderly:local" and service["command"] != ["init"]:
            counts[process_kind(service["command"])] += service.get("deploy", {}).get("replicas", 1)
    assert counts == local_counts()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_process_is_probed_on_its_own_port(overlay: str) -> None:
    contract = probe_ports()
    for kind, deployment in deployments(overlay).items():
        main = container(deployment)
        served = flag(main["args"], "--port") or flag(main["args"], "--health-port")
        assert served, f"{kind}: the command names the port it serves /healthz on"
        [port] = main["ports"]
        assert port["name"] == "http"
        assert port["containerPort"] == int(served)
        assert int(served) in contract[kind], f"{kind}: {served} is not in the port contract {contract[kind]}"
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert main["startupProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_process_gets_longer_than_its_drain_to_stop(overlay: str) -> None:
    for kind, deployment in deployments(overlay).items():
        pod = deployment["spec"]["template"]["spec"]
        pre_stop = container(deployment).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + DRAIN_SECONDS, kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget(overlay: str) -> None:
    budgets = {
        tuple(sorted(pdb["spec"]["selector"]["matchLabels"].items())): pdb
        for pdb in of_kind(overlay, "PodDisruptionBudget")
    }
    for deployment in of_kind(overlay, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items()))
        assert all(labels[k] == v for k, v in selector)
        assert selector in budgets, f"{deployment['metadata']['name']} has no PodDisruptionBudget"
        assert budgets[selector]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_stateless_apis_are_autoscaled_and_each_has_a_service(overlay: str) -> None:
    apis = {d["metadata"]["name"] for kind, d in deployments(overlay).items() if is_api(kind)}
    assert set(hpas(overlay)) == apis
    services = {s["metadata"]["name"]: s for s in of_kind(overlay, "Service")}
    for name in apis:
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_are_no_smaller_than_the_measured_footprint(overlay: str) -> None:
    footprint = json.loads((ROOT / "bench" / "results" / "footprint.json").read_text())["processes"]
    for kind, deployment in deployments(overlay).items():
        peaks = [p["peak_rss_mib"] for name, p in footprint.items() if FOOTPRINT_NAMES[kind].fullmatch(name)]
        assert peaks, f"bench/results/footprint.json has no figure for {kind}"
        resources = container(deployment)["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, kind
        assert mebibytes(resources["requests"]["memory"]) >= 1.25 * max(peaks), kind
        assert mebibytes(resources["limits"]["memory"]) >= 2 * max(peaks), kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_init_job_runs_orderly_init_with_the_same_settings(overlay: str) -> None:
    [job] = of_kind(overlay, "Job")
    [main] = job["spec"]["template"]["spec"]["containers"]
    assert main["args"] == ["init"]
    for deployment in of_kind(overlay, "Deployment"):
        assert container(deployment)["envFrom"] == main["envFrom"], deployment["metadata"]["name"]
        assert container(deployment)["image"] == main["image"]


def settings_sections() -> dict[str, type[BaseModel]]:
    """``postgres`` → PostgresSettings, ``probe`` → ProbeSettings, …: what ORDERLY_<SECTION>__<FIELD> sets."""
    return {
        name.removesuffix("Settings").lower(): model
        for name, model in vars(settings_module).items()
        if name.endswith("Settings")
        and isinstance(model, type)
        and issubclass(model, BaseModel)
        and not issubclass(model, BaseSettings)
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_in_the_config_map_is_a_real_setting(overlay: str) -> None:
    [config] = of_kind(overlay, "ConfigMap")
    sections = settings_sections()
    for key in config["data"]:
        match = re.fullmatch(r"ORDERLY_([A-Z]+)__([A-Z_]+)", key)
        assert match, key
        model = sections.get(match[1].lower())
        assert model is not None, f"{key}: no settings section {match[1].lower()}"
        assert match[2].lower() in model.model_fields, f"{key}: {model.__name__} has no {match[2].lower()}"
        assert "PASSWORD" not in key, f"{key} belongs in the Secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_listens_where_probes_and_prometheus_reach_it(overlay: str) -> None:
    [config] = of_kind(overlay, "ConfigMap")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["init"]["environment"]
    for where in (config["data"], compose):
        assert where["ORDERLY_HTTP__HOST"] == "0.0.0.0", "APIs"
        assert where["ORDERLY_PROBE__HOST"] == "0.0.0.0", "the probe servers of background processes"


def test_the_dev_secret_holds_only_development_only_passwords() -> None:
    [secret] = of_kind("dev", "Secret")
    assert set(secret["data"]) == {
        f"ORDERLY_{s}__PASSWORD" for s in ("POSTGRES", "MYSQL", "REDIS", "RABBITMQ", "CLICKHOUSE")
    }
    text = (K8S / "overlays" / "dev" / "kustomization.yaml").read_text()
    assert "development-only" in text
    assert not of_kind("prod", "Secret"), "production secrets come from the cluster's secret store"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_numeric_non_root_user(overlay: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^USER (\d+)(?::(\d+))?$", dockerfile, re.MULTILINE)
    assert found, "the Dockerfile names a numeric USER, so that runAsNonRoot can be verified"
    for workload in [*of_kind(overlay, "Deployment"), *of_kind(overlay, "Job")]:
        context = workload["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == int(found[1]), workload["metadata"]["name"]


def deployed_command_lines() -> dict[str, list[str]]:
    """Every `orderly …` command line that compose.yaml or a manifest runs, by where it comes from."""
    lines: dict[str, list[str]] = {}
    for name, service in yaml.safe_load((ROOT / "compose.yaml").read_text())["services"].items():
        if service.get("image") == "orderly:local":
            lines[f"compose {name}"] = service["command"]
    for overlay in OVERLAYS:
        for workload in [*of_kind(overlay, "Deployment"), *of_kind(overlay, "Job")]:
            lines[f"{overlay} {workload['kind']} {workload['metadata']['name']}"] = container(workload)["args"]
    return lines


def test_every_deployed_command_line_is_one_the_cli_accepts() -> None:
    runner = CliRunner()
    lines = deployed_command_lines()
    assert len(lines) > 20
    for where, args in lines.items():
        # --help is eager: it answers 0 only once every sub-command and option before it was recognised.
        done = runner.invoke(app, [*args, "--help"])
        assert done.exit_code == 0, f"{where}: orderly {' '.join(args)}\n{done.output}"
