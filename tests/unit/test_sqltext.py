"""Statement splitting and literal stripping of PostgreSQL scripts."""

from __future__ import annotations

import pytest

from releasegate.migrations.sqltext import (
    Statement,
    StatementLocator,
    split_statements,
    strip_literals_and_comments,
)


def texts(sql: str) -> list[str]:
    return [statement.text for statement in split_statements(sql)]


def test_splits_on_semicolons_and_strips_whitespace() -> None:
    assert texts("  CREATE TABLE a (id int) ;\n\nSELECT 1;  ") == [
        "CREATE TABLE a (id int)",
        "SELECT 1",
    ]


def test_last_statement_needs_no_semicolon() -> None:
    assert texts("SELECT 1; SELECT 2") == ["SELECT 1", "SELECT 2"]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b'", "SELECT 2"]),
        ("SELECT 'it''s; fine'; x", ["SELECT 'it''s; fine'", "x"]),
        # A backslash escapes the quote only in E'' strings ...
        ("SELECT E'a\\';b'; x", ["SELECT E'a\\';b'", "x"]),
        ("SELECT e'\\\\'; x", ["SELECT e'\\\\'", "x"]),
        # ... and is an ordinary character in standard strings.
        ("SELECT 'a\\'; x", ["SELECT 'a\\'", "x"]),
        ('SELECT "odd;name", "q""uote;" FROM t; x', ['SELECT "odd;name", "q""uote;" FROM t', "x"]),
        ("SELECT $$a;b$$; x", ["SELECT $$a;b$$", "x"]),
        (
            "DO $body$ BEGIN PERFORM 1; $$; END $body$; x",
            ["DO $body$ BEGIN PERFORM 1; $$; END $body$", "x"],
        ),
        ("SELECT 1 -- not; here\n; x", ["SELECT 1", "x"]),
        (
            "SELECT /* a; /* nested; */ still; */ 1; x",
            ["SELECT /* a; /* nested; */ still; */ 1", "x"],
        ),
    ],
)
def test_semicolons_inside_quotes_and_comments_do_not_split(sql: str, expected: list[str]) -> None:
    assert texts(sql) == expected


def test_positional_parameter_and_dollar_in_identifier_are_not_dollar_quotes() -> None:
    assert texts("SELECT $1; SELECT foo$$bar; x") == ["SELECT $1", "SELECT foo$$bar", "x"]


def test_dollar_quote_tag_must_match_to_close() -> None:
    assert texts("SELECT $a$ $b$ ; $a$; x") == ["SELECT $a$ $b$ ; $a$", "x"]


def test_semicolons_inside_parentheses_do_not_split() -> None:
    sql = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); NOTIFY t); x"
    assert texts(sql) == [
        "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); NOTIFY t)",
        "x",
    ]


def test_begin_atomic_routine_body_is_one_statement() -> None:
    sql = (
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT 1;\n  SELECT CASE WHEN true THEN 2 END;\nEND;\n"
        "BEGIN;\nCOMMIT;"
    )
    statements = split_statements(sql)
    assert [s.text.split()[0] for s in statements] == ["CREATE", "BEGIN", "COMMIT"]
    assert statements[0].text.endswith("END")
    assert (statements[0].line_start, statements[0].line_end) == (1, 5)


def test_drops_empty_statements_and_pure_comments() -> None:
    sql = ";;\n-- only a comment;\n/* block; */ ;\n  ;SELECT 1;\n-- trailing"
    assert texts(sql) == ["SELECT 1"]


def test_leading_and_trailing_comments_are_not_part_of_the_text() -> None:
    sql = "-- Running upgrade a -> b\n\nCREATE TABLE t (id int) -- why\n;"
    assert split_statements(sql) == [Statement("CREATE TABLE t (id int)", 3, 3)]


def test_inner_comments_are_kept() -> None:
    assert texts("SELECT 1 -- one\n + /* two */ 2;") == ["SELECT 1 -- one\n + /* two */ 2"]


def test_line_numbers_are_one_based_and_span_lines() -> None:
    sql = "SELECT 1;\n\nALTER TABLE t\n  ADD COLUMN x int;\nSELECT 'a\nb'; SELECT 3;"
    assert split_statements(sql) == [
        Statement("SELECT 1", 1, 1),
        Statement("ALTER TABLE t\n  ADD COLUMN x int", 3, 4),
        Statement("SELECT 'a\nb'", 5, 6),
        Statement("SELECT 3", 6, 6),
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_numbers_follow_every_newline_convention(newline: str) -> None:
    sql = newline.join(["SELECT 1;", "", "SELECT 2;"])
    assert [s.line_start for s in split_statements(sql)] == [1, 3]


@pytest.mark.parametrize(
    "sql",
    ["SELECT 'never closed; x", 'SELECT "never closed; x', "SELECT $$ never; x", "SELECT /* x; y"],
)
def test_unterminated_quote_or_comment_runs_to_the_end(sql: str) -> None:
    assert len(split_statements(sql)) == 1


def test_strip_literals_and_comments() -> None:
    sql = (
        "SELECT 'DROP TABLE x', E'it\\'s', $$DROP$$, $t$ DROP $t$ -- DROP TABLE\n"
        ', "keep me" /* DROP /* nested */ */ FROM t'
    )
    stripped = strip_literals_and_comments(sql)
    assert "DROP" not in stripped
    assert stripped == "SELECT '', '', '', ''  \n, \"keep me\"   FROM t"


def test_locator_maps_positions_to_statements() -> None:
    sql = "SELECT 1; SELECT 'é'; SELECT\n  3;\n-- trailing\n"
    locator = StatementLocator(sql)
    assert locator.statements == split_statements(sql)
    assert locator.index_at(1, 0) == 0
    assert locator.index_at(1, 8) == 0  # the semicolon belongs to its statement
    assert locator.index_at(1, 9) == 1  # so does the space before the next one
    # Columns count UTF-8 bytes: "é" is two bytes, so byte 21 is the second ";".
    assert locator.index_at(1, 21) == 1
    assert locator.index_at(1, 23) == 2
    assert locator.index_at(2, 2) == 2
    assert locator.index_at(3, 0) is None
    assert locator.index_at(99, 0) is None


def test_locator_gives_leading_comments_to_the_next_statement() -> None:
    locator = StatementLocator("SELECT 1;\n-- about the next one\nSELECT 2;")
    assert locator.index_at(2, 3) == 1


def test_locator_end_of_unterminated_script_is_the_last_statement() -> None:
    locator = StatementLocator("SELECT 1; SELECT (")
    assert locator.index_at(1, 18) == 1
