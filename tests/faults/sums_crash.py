"""A sums API instance that crashes right after a chosen key's commit: fault injection the test composes in.

``python -m tests.faults.sums_crash --port N`` with ``ORDERLY_TEST_CRASH_AFTER_COMMIT_KEY=<key>``: the production
app (same settings, same composition root) with an ``on_committed`` observer that calls ``os._exit(137)`` once a
committed batch stored ``key``, after the MySQL COMMIT and before the Redis write, the one window the design must
survive. The production code path has no crash switch; it only offers the ``on_committed`` seam.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

from starlette.types import ASGIApp

from orderly.platform.http import export_to_environment
from orderly.sums.app import create_app
from orderly.sums.cli import serve_in_process
from orderly.sums.settings import SumsSettings

KEY_VARIABLE = "ORDERLY_TEST_CRASH_AFTER_COMMIT_KEY"
log = logging.getLogger("tests.faults.sums_crash")


def crash_after_commit_of(key: str) -> Callable[[tuple[str, ...]], None]:
    def crash_if_committed(keys: tuple[str, ...]) -> None:
        if key in keys:
            log.warning("test hook: crashing after the mysql commit", extra={"key": key})
            os._exit(137)

    return crash_if_committed


def crashing_app() -> ASGIApp:
    return create_app(on_committed=crash_after_commit_of(os.environ[KEY_VARIABLE]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    export_to_environment("ORDERLY_HTTP__", {"port": port})
    http = SumsSettings().http
    raise SystemExit(serve_in_process(http, process_name=f"orderly-sums-crashing-{port}", factory=crashing_app))


if __name__ == "__main__":
    main()
