"""Where a benchmark leaves its figures: ``bench/results/<name>.json`` (read by render.py and bench-ab) and ``.md``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def save_results(name: str, results: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> str:
    """Write the results as ``<name>.json`` and their table as ``<name>.md``; returns the table."""
    table = markdown(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table)
    return table
