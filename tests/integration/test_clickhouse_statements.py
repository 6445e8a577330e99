"""Every ClickHouse statement the project issues runs on the local 18.16 server and on a current engine (chDB).

compose.yaml runs a current ClickHouse release, the local stack Debian's 18.16. Rather than a copy of the SQL, the
test drives the code that issues it — the migration runner with the items migrations, and the change log's insert,
ping and `/logs` reads — through two clients that subclass clickhouse-driver's: one talks to the local server, the
other renders each statement the way clickhouse-driver does and runs it in chDB, in-process. Both record what they
ran; the two transcripts and the `/logs` answers must be identical.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from chdb.session import Session
from clickhouse_driver import Client
from clickhouse_driver.util.escape import escape_param, escape_params

from orderly.items.changelog import ChangeLog, LogQuery
from orderly.platform.migrations import load_migrations, migrate_clickhouse
from orderly.platform.settings import InfraSettings
from tests.plumbing import Namespace

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "items"

# Every module that reaches ClickHouse, and what it does there. Statement issuers are driven below; a new module that
# talks to ClickHouse must be added here and, if it issues statements, driven by `exercise` too.
CLICKHOUSE_MODULES = {
    "orderly/platform/migrations.py": "issues the migration statements (driven below)",
    "orderly/items/changelog.py": "issues inserts and the /logs reads (driven below)",
    "orderly/platform/pools.py": "builds the client",
    "orderly/items/migrate.py": "passes a client to the migration runner",
    "orderly/items/app.py": "passes a client to ChangeLog",
    "orderly/items/audit.py": "passes a client to ChangeLog; catches its errors",
    "orderly/platform/errors.py": "classifies the driver's exceptions; issues no statement",
}


class Recording:
    """What a client ran: each statement's text with its parameter names, not their values."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def add(self, query: str, params: Any) -> None:
        text = " ".join(query.split())
        if isinstance(params, list):
            text += f" <{len(params)} rows>"
        self.statements.append(text)


class ServerClient(Client):  # type: ignore[misc]
    """clickhouse-driver against the local stack's server, recording each statement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recording = Recording()

    def execute(self, query: str, params: Any = None, **kwargs: Any) -> Any:
        self.recording.add(query, params)
        return super().execute(query, params, **kwargs)


class ChdbClient(Client):  # type: ignore[misc]
    """clickhouse-driver's interface over chDB: parameters rendered by clickhouse-driver's own escaping."""

    CONTEXT = SimpleNamespace(server_info=SimpleNamespace(get_timezone=lambda: "UTC"))

    def __init__(self, session: Session) -> None:
        super().__init__(host="chdb.invalid")  # never connects: execute is replaced
        self.session = session
        self.recording = Recording()

    def render(self, query: str, params: Any) -> str:
        if isinstance(params, list):  # an INSERT ... VALUES with its rows, which the driver sends as native blocks
            return query + " " + ", ".join(escape_param(tuple(row), self.CONTEXT) for row in params)
        if params:
            return str(query % escape_params(params, self.CONTEXT))
        return query

    def execute(self, query: str, params: Any = None, **_kwargs: Any) -> Any:
        self.recording.add(query, params)
        output = self.session.query(self.render(query, params), "JSONCompact").data()
        return [tuple(row) for row in json.loads(output)["data"]] if output.strip() else []

    def disconnect(self) -> None:
        pass


def event(event_id: str, item_id: int, campaign_id: int, us: int, *, description: str | None = "d") -> bytes:
    return json.dumps(
        {
            "eventId": event_id,
            "itemId": item_id,
            "campaignId": campaign_id,
            "name": f"it's item {item_id}\twith a tab",
            "description": description,
            "priority": item_id * 10,
            "removed": item_id == 3,
            "kind": "created",
            "eventTimeUs": us,
        }
    ).encode()


BATCHES = [
    [event("e1", 1, 1, 1_700_000_000_000_001), event("e2", 2, 1, 1_700_000_000_500_000, description=None)],
    # A redelivered event (same id) with a new one: /logs must show it once (ReplacingMergeTree + FINAL).
    [event("e2", 2, 1, 1_700_000_000_500_000, description=None), event("e3", 3, 2, 1_700_000_001_000_000)],
]
QUERIES = [
    LogQuery(limit=10, offset=1),
    LogQuery(limit=1, offset=2),
    LogQuery(limit=10, offset=1, item_id=2),
    LogQuery(limit=10, offset=1, campaign_id=2),
    LogQuery(limit=10, offset=1, item_id=1, campaign_id=1),
]


@dataclass
class Transcript:
    statements: list[str]
    applied: list[list[int]]
    answers: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    version: str = ""


async def exercise(client: Client, recording: Recording, database: str) -> Transcript:
    """Drive every code path that issues ClickHouse statements, as the items service does."""
    migrations = load_migrations("orderly.items", "clickhouse")
    applied = [migrate_clickhouse(client, database=database, service=SERVICE, migrations=migrations) for _ in (1, 2)]
    changelog = ChangeLog(client, database=database)
    assert await changelog.ping()
    for batch in BATCHES:
        await changelog.insert(batch)
    answers = [await changelog.read(query) for query in QUERIES]
    transcript = Transcript(list(recording.statements), applied, answers)
    [(transcript.version,)] = client.execute("SELECT version()")
    return transcript


def statement_kinds(statements: Sequence[str]) -> set[str]:
    return {" ".join(s.split()[:2]).upper() for s in statements}


@pytest.fixture(scope="module")
def database(namespace: Namespace) -> str:
    """One name for both engines, so that their transcripts compare as they are."""
    name = f"{namespace.prefix}_ch_statements"
    namespace.ch_databases.append(name)  # dropped on the server with the run's other namespaces
    return name


@pytest.fixture(scope="module")
async def on_server(database: str, stack: InfraSettings) -> Transcript:
    settings = stack.clickhouse
    client = ServerClient(
        host=settings.host, port=settings.port, user=settings.user, password=settings.password.get_secret_value()
    )
    try:
        return await exercise(client, client.recording, database)
    finally:
        client.disconnect()


@pytest.fixture(scope="module")
def chdb_session() -> Any:
    with tempfile.TemporaryDirectory(prefix="orderly-chdb-") as folder:
        session = Session(folder)
        session.query("SET output_format_json_quote_64bit_integers = 0")
        try:
            yield session
        finally:
            session.close()


@pytest.fixture(scope="module")
async def on_chdb(chdb_session: Session, database: str) -> Transcript:
    client = ChdbClient(chdb_session)
    return await exercise(client, client.recording, database)


def test_the_local_server_is_18_16_and_chdb_a_current_engine(on_server: Transcript, on_chdb: Transcript) -> None:
    assert on_server.version.startswith("18.16."), on_server.version
    assert int(on_chdb.version.split(".")[0]) >= 25, f"chDB embeds a current release, not {on_chdb.version}"


def test_every_clickhouse_statement_runs_on_18_16_and_on_a_current_engine(
    on_server: Transcript, on_chdb: Transcript
) -> None:
    assert on_server.statements == on_chdb.statements
    assert {"CREATE DATABASE", "CREATE TABLE", "SELECT VERSION", "INSERT INTO", "SELECT COUNT()", "SELECT 1"} <= (
        statement_kinds(on_chdb.statements)
    ), on_chdb.statements
    assert on_server.applied == on_chdb.applied == [[1], []], "the migration applies once, then is recorded"


def test_the_logs_answers_are_identical_on_both_engines(on_server: Transcript, on_chdb: Transcript) -> None:
    assert on_server.answers == on_chdb.answers
    total, events = on_chdb.answers[0]
    assert total == 3, "the redelivered event shows once"
    assert [e["eventId"] for e in events] == ["e3", "e2", "e1"], "newest first"
    assert events[1]["description"] is None
    assert events[0]["removed"] is True
    assert events[2]["eventTime"].endswith(".000001Z")


def test_compose_runs_the_clickhouse_release_that_chdb_embeds(on_chdb: Transcript) -> None:
    image = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["clickhouse"]["image"]
    tag = image.rpartition(":")[2]
    major_minor = ".".join(on_chdb.version.split(".")[:2])
    assert tag.split("-")[0] == major_minor or tag.startswith(major_minor + "."), (image, major_minor)


def test_every_module_that_reaches_clickhouse_is_driven_here() -> None:
    src = ROOT / "src"
    found = {
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if re.search(r"clickhouse_driver|clickhouse_client\(", path.read_text(encoding="utf-8"))
    }
    assert found == set(CLICKHOUSE_MODULES), "a module started or stopped talking to ClickHouse: update this test"
