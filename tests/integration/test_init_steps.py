"""An init step (a migration, topic creation) run while a server it needs is away says so in one line and exits 75.

`orderly init`, `orderly up` and compose's init service run these steps; the operator reads their output. A server
that is down is not a bug: no traceback, no line per connection attempt, and an exit code (sysexits' EX_TEMPFAIL)
that tells a supervisor to run the step again later.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import PIPE, STDOUT

import pytest

from orderly.platform.lifecycle import EXIT_UNAVAILABLE
from tests.plumbing import Namespace, free_port, infra_env

STEPS = [
    ("ingest", "migrate", "postgres"),
    ("sums", "migrate", "mysql"),
    ("items", "migrate", "postgres"),
    ("items", "migrate", "nats"),  # after its PostgreSQL and ClickHouse migrations went through
    ("loms", "migrate", "postgres"),
    ("loms", "init-topics", "kafka"),
]


@pytest.mark.parametrize(("service", "step", "server"), STEPS, ids=[f"{s}-{t}-{d}" for s, t, d in STEPS])
async def test_an_init_step_with_a_server_away_exits_75_with_one_line_naming_it(
    namespace: Namespace, service: str, step: str, server: str
) -> None:
    settings = await namespace.settings(f"away{STEPS.index((service, step, server))}")
    away = getattr(settings, server).model_copy(update={"port": free_port()})
    env = {**os.environ, **infra_env(settings.model_copy(update={server: away}))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orderly", service, step, env=env, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    lines = [line for line in output.decode().splitlines() if line.strip()]
    assert proc.returncode == EXIT_UNAVAILABLE, lines
    assert not any("Traceback" in line for line in lines), lines
    records = [json.loads(line) for line in lines]  # every line is a log record: nothing printed around them
    problems = [r for r in records if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert [r["level"] for r in problems] == ["CRITICAL"], problems
    assert problems[0]["dependency"] == server
    assert problems[0]["message"].startswith(f"{server} is unavailable ("), problems[0]
    if server == "nats":  # nats-py's own error names no address; ours adds it (the others' errors carry theirs)
        assert str(away.port) in problems[0]["message"], "the line does not say where it looked"
    assert records[-1] is problems[0]
