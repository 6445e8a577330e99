"""The migration runner's file handling: ordered versions, statement splitting for MySQL and ClickHouse."""

from __future__ import annotations

from orderly.platform.migrations import split_statements


def test_statements_split_on_semicolons_that_end_a_line() -> None:
    sql = """-- a comment line
CREATE TABLE a (
  x INT, note VARCHAR(10) DEFAULT 'a;b'
);
INSERT INTO a VALUES (1, 'x');

CREATE INDEX i ON a (x)"""
    assert split_statements(sql) == [
        "CREATE TABLE a (\n  x INT, note VARCHAR(10) DEFAULT 'a;b'\n)",
        "INSERT INTO a VALUES (1, 'x')",
        "CREATE INDEX i ON a (x)",
    ]


def test_an_empty_script_has_no_statements() -> None:
    assert split_statements("-- nothing\n\n") == []
