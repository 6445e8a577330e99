"""The README's configuration reference is the one the settings classes generate (docs match the code)."""

from __future__ import annotations

from pathlib import Path

from orderly.configref import BEGIN, END, reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_reference_matches_the_settings_classes() -> None:
    text = README.read_text(encoding="utf-8")
    generated = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert generated == reference(), "run `uv run python -m orderly.configref` to regenerate it"


def test_every_configuration_row_says_what_the_setting_means() -> None:
    empty = [
        row.split("|")[1].strip() for row in reference().splitlines() if row.startswith("| `") and row.endswith("|  |")
    ]
    assert empty == [], "add a Field(description=...) to each of these settings"
