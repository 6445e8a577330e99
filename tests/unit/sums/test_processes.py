"""What `orderly up` runs for sums."""

from __future__ import annotations

from orderly.sums.processes import processes


def test_up_runs_the_migration_first_then_three_api_instances_on_8201_to_8203() -> None:
    specs = processes()
    assert [s.init for s in specs] == [True, False, False, False]
    assert specs[0].args == ("sums", "migrate")
    assert [s.http_port for s in specs[1:]] == [8201, 8202, 8203]
    assert all(s.args[:2] == ("sums", "api") and s.args[-1] == str(s.http_port) for s in specs[1:])
    assert len({s.name for s in specs}) == 4
