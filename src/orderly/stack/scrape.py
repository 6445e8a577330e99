"""Prometheus's configuration for the local stack: scrape every process of `orderly up`, evaluate orderly's rules.

The targets come from the same process table `orderly up` runs (each process's probe port, ``ORDERLY_UP__PORT_OFFSET``
applied) plus the supervisor; every target carries a ``process`` label with the process's name. ``honor_labels`` keeps
the labels a process sets itself (``instance`` of ``orderly_active``, ``process`` of the supervisor's restart counter).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from orderly.platform.processes import SUPERVISOR_PORT, ProcessSpec, port_offset

SCRAPE_INTERVAL = "5s"
RULES_FILE = "rules.yml"


def rules_text() -> str:
    """The alert rules (``orderly/stack/prometheus/rules.yml``, shared with compose.yaml)."""
    return (resources.files("orderly.stack") / "prometheus" / RULES_FILE).read_text(encoding="utf-8")


def scrape_config(specs: Sequence[ProcessSpec], *, rules: str, host: str = "127.0.0.1") -> dict[str, Any]:
    """prometheus.yml as a mapping: one static target per long-running process, one for the supervisor."""
    targets = [
        {"targets": [f"{host}:{spec.probe_port}"], "labels": {"process": spec.name}}
        for spec in specs
        if not spec.init and spec.probe_port
    ]
    supervisor = [{"targets": [f"{host}:{SUPERVISOR_PORT + port_offset()}"], "labels": {"process": "supervisor"}}]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [rules],
        "scrape_configs": [
            {"job_name": "orderly", "honor_labels": True, "static_configs": targets},
            {"job_name": "supervisor", "honor_labels": True, "static_configs": supervisor},
        ],
    }
