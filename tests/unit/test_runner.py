"""`orderly up`'s plumbing without servers: the port offset moves every process port, and the stream keeps honcho's
format with a per-process copy (a tripwire for the parts of honcho we rely on)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from honcho.colour import get_colours
from honcho.printer import Message

from orderly.platform.processes import SUPERVISOR_PORT, ProcessSpec, with_port_offset
from orderly.runner import SYSTEM, Stream, TeePrinter, all_processes, service_processes, supervisor_port


def test_the_port_offset_moves_every_port_flag_and_port_field_and_nothing_else() -> None:
    spec = ProcessSpec(
        name="x",
        args=("svc", "run", "--port", "8301", "--health-port=9311", "--instance", "x-1", "--count", "3"),
        http_port=8301,
        health_port=9311,
    )

    moved = with_port_offset(spec, 1000)

    assert moved.args == ("svc", "run", "--port", "9301", "--health-port=10311", "--instance", "x-1", "--count", "3")
    assert (moved.http_port, moved.health_port, moved.probe_port) == (9301, 10311, 9301)
    assert with_port_offset(spec, 0) == spec


def test_orderly_up_moves_every_process_port_and_its_own_by_the_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    usual = {spec.name: spec for spec in all_processes() if not spec.init}
    monkeypatch.setenv("ORDERLY_UP__PORT_OFFSET", "2000")

    moved = service_processes()

    assert [spec.name for spec in moved] == list(usual)
    assert supervisor_port() == SUPERVISOR_PORT + 2000
    for spec in moved:
        before = usual[spec.name]
        if before.http_port is not None:
            assert spec.http_port == before.http_port + 2000
            assert str(spec.http_port) in spec.args
        if before.health_port is not None:
            assert spec.health_port == before.health_port + 2000


def test_honchos_printer_still_prints_time_name_and_line_and_the_tee_keeps_a_copy_per_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert Message._fields == ("type", "data", "time", "name", "colour")
    assert all(isinstance(colour, str) for colour, _ in zip(get_colours(), range(20), strict=False))
    printer = TeePrinter(tmp_path, width=8)
    stream = Stream(printer, ["api", "worker"])

    stream.line("api", "hello")
    stream.line("worker", "übung")
    stream.note("api killed by SIGKILL after 1.0 s; restart #1 in 0.5 s")
    printer.close()

    printed = capsys.readouterr().out.splitlines()
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in printed] == [
        "api      | hello",
        "worker   | übung",
        f"{SYSTEM:<8} | api killed by SIGKILL after 1.0 s; restart #1 in 0.5 s",
    ]
    assert (tmp_path / "api.log").read_text(encoding="utf-8") == "hello\n"
    assert (tmp_path / "worker.log").read_text(encoding="utf-8") == "übung\n"
    assert not (tmp_path / f"{SYSTEM}.log").exists()
