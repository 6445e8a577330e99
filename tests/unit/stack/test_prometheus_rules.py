"""Alert rules and scrape configuration: each rule proven by `promtool test rules`, each config checked by promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from orderly.platform.processes import HEALTH_PORTS, SUPERVISOR_PORT
from orderly.runner import all_processes, service_processes
from orderly.stack.scrape import RULES_FILE, rules_text, scrape_config

ROOT = Path(__file__).resolve().parents[3]
RULE_TESTS = Path(__file__).with_name("prometheus_rules_test.yml")
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool comes with the prometheus Debian package, installed by `make setup`"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)


def alert_names() -> list[str]:
    groups = yaml.safe_load(rules_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def test_every_alert_rule_passes_its_promtool_unit_tests() -> None:
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_test_a_quiet_test_and_a_runbook_entry() -> None:
    cases: dict[str, list[Any]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case["exp_alerts"])
    runbook = OPERATIONS.read_text(encoding="utf-8")
    names = alert_names()
    assert len(names) >= 7
    for name in names:
        assert any(cases.get(name, [])), f"{name}: no test where it fires"
        assert any(not expected for expected in cases.get(name, [])), f"{name}: no test where it stays quiet"
        assert re.search(rf"^#### {name}$", runbook, re.MULTILINE), f"{name}: no runbook entry in docs/operations.md"


def test_the_local_stack_config_scrapes_every_process_and_the_supervisor_and_passes_promtool(tmp_path: Path) -> None:
    (tmp_path / RULES_FILE).write_text(rules_text())
    config = scrape_config(all_processes(), rules=RULES_FILE)
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    done = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    targets = {
        group["labels"]["process"]: group["targets"]
        for job in config["scrape_configs"]
        for group in job["static_configs"]
    }
    assert targets["supervisor"] == [f"127.0.0.1:{SUPERVISOR_PORT}"]
    for name, port in HEALTH_PORTS.items():
        assert targets[name] == [f"127.0.0.1:{port}"]
    assert targets["ingest-api"] == ["127.0.0.1:8101"]
    assert len(targets) == len([s for s in all_processes() if not s.init]) + 1


def test_the_port_offset_moves_every_scrape_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERLY_UP__PORT_OFFSET", "1000")
    config = scrape_config(service_processes(), rules=RULES_FILE)
    ports = {
        group["labels"]["process"]: int(group["targets"][0].rsplit(":", 1)[1])
        for job in config["scrape_configs"]
        for group in job["static_configs"]
    }
    assert ports["supervisor"] == SUPERVISOR_PORT + 1000
    assert ports["notifier-3"] == HEALTH_PORTS["notifier-3"] + 1000
    assert ports["sums-2"] == 8202 + 1000
