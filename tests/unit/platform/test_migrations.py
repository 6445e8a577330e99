"""The migration runner's file handling: statements split where they end, never inside a literal, comment or body."""

from __future__ import annotations

import pytest

from orderly.platform.migrations import split_statements


def test_statements_split_on_the_semicolons_that_end_them() -> None:
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


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("INSERT INTO t VALUES ('a;\nb;'); SELECT 1;", ["INSERT INTO t VALUES ('a;\nb;')", "SELECT 1"]),
        ("INSERT INTO t VALUES ('it''s; ok');SELECT 2", ["INSERT INTO t VALUES ('it''s; ok')", "SELECT 2"]),
        (r"INSERT INTO t VALUES ('back\'slash;'); SELECT 3", [r"INSERT INTO t VALUES ('back\'slash;')", "SELECT 3"]),
        ('SELECT "we;ird" FROM t; SELECT `back;tick` FROM t', ['SELECT "we;ird" FROM t', "SELECT `back;tick` FROM t"]),
        ("SELECT 1; -- a comment; with a semicolon\nSELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("/* block; comment */ SELECT 1; SELECT 2 /* ; */;", ["SELECT 1", "SELECT 2"]),
        (
            "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql; SELECT f();",
            ["CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql", "SELECT f()"],
        ),
        (
            "CREATE FUNCTION g() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;",
            ["CREATE FUNCTION g() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql"],
        ),
        ("SELECT 'a -- not a comment;'; SELECT 2", ["SELECT 'a -- not a comment;'", "SELECT 2"]),
    ],
)
def test_a_semicolon_inside_a_literal_identifier_comment_or_body_does_not_split(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected


def test_an_empty_script_has_no_statements() -> None:
    assert split_statements("-- nothing\n\n/* at all; */\n") == []
