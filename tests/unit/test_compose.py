"""compose.yaml is valid and runs the same processes as the local runner (`orderly up`)."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from orderly.runner import all_processes

ROOT = Path(__file__).resolve().parents[2]
PER_INSTANCE_FLAGS = {"--port", "--instance", "--log-file"}  # differ per copy or per runner, not per process kind


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
