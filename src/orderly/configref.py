"""The configuration reference, generated from the settings classes so the README cannot drift from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from orderly.ingest.settings import IngestSettings
from orderly.items.settings import ItemsSettings
from orderly.loms.settings import LomsSettings
from orderly.notifier.settings import NotifierSettings
from orderly.platform.settings import HttpSettings, InfraSettings, LogSettings, OrderlySettings
from orderly.sums.settings import SumsSettings

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
SECTIONS: list[tuple[str, type[OrderlySettings], set[str] | None]] = [
    ("Servers (every process; the defaults are the local stack's)", InfraSettings, None),
    ("HTTP and logging (every process)", OrderlySettings, None),
    ("Probes of the background processes (workers, relays, consumers, daemon)", IngestSettings, {"probe"}),
    ("ingest", IngestSettings, {"ingest"}),
    ("sums", SumsSettings, {"sums"}),
    ("items", ItemsSettings, {"items"}),
    ("loms", LomsSettings, {"loms"}),
    ("notifier", NotifierSettings, {"notifier"}),
]


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(computed at start)"
    value: Any = field.get_default()
    if isinstance(value, SecretStr):
        return '""' if not value.get_secret_value() else "(secret)"
    if isinstance(value, str):
        return f'"{value}"'
    return "—" if value is None else str(value)


def _rows(prefix: str, model: type[BaseModel]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(f"{prefix}{name.upper()}__", annotation)
            continue
        text = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name.upper()}` | `{_default(field)}` | {text} |")
    return rows


def reference() -> str:
    parts = [BEGIN, ""]
    for title, settings, only in SECTIONS:
        fields = {name: field for name, field in settings.model_fields.items() if only is None or name in only}
        if settings is OrderlySettings:
            fields = {"http": FieldInfo(annotation=HttpSettings), "log": FieldInfo(annotation=LogSettings)}
        parts += [f"**{title}**", "", "| variable | default | meaning |", "|---|---|---|"]
        for name, field in fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                parts += _rows(f"ORDERLY_{name.upper()}__", annotation)
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def update_readme(path: Path) -> bool:
    """Rewrite the README's generated section; returns whether it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    updated = text[:start] + reference() + text[end:]
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":
    update_readme(Path(__file__).resolve().parents[2] / "README.md")
