"""Expand/contract/data classification of statements and revisions."""

from __future__ import annotations

import pytest

from releasegate.errors import ConfigError
from releasegate.migrations.phases import (
    Phase,
    classify_statement,
    derive_phase,
    is_type_change,
    most_restrictive,
    resolve_phase,
    type_change_phase,
)


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE users",
        "drop table if exists public.users, other cascade",
        'DROP TABLE "Users"',
        "DROP FOREIGN TABLE remote",
        "ALTER TABLE users DROP COLUMN email",
        "ALTER TABLE users DROP COLUMN IF EXISTS email CASCADE",
        "ALTER TABLE users DROP email",
        'ALTER TABLE users DROP "NOT"',
        "ALTER TABLE IF EXISTS ONLY app.users DROP COLUMN email",
        'alter table "app"."Users" drop column "E-mail"',
        "ALTER TABLE users RENAME TO people",
        "ALTER TABLE users RENAME COLUMN email TO mail",
        "ALTER TABLE users RENAME email TO mail",
        "ALTER TABLE users ALTER COLUMN id TYPE bigint",
        "ALTER TABLE users ALTER id TYPE bigint USING id::bigint",
        "ALTER TABLE users ALTER COLUMN id SET DATA TYPE bigint",
        "ALTER TABLE users ALTER COLUMN type TYPE text",
        "ALTER FOREIGN TABLE remote DROP COLUMN x",
        "DROP VIEW v",
        "DROP VIEW IF EXISTS a.v, b.w",
        "DROP MATERIALIZED VIEW mv",
        "DROP TYPE mood",
        "DROP SCHEMA legacy CASCADE",
        "ALTER\n  TABLE users\n    DROP\n      COLUMN email",
    ],
)
def test_contract_statements(sql: str) -> None:
    assert classify_statement(sql) is Phase.CONTRACT


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE users (id bigint PRIMARY KEY, drop_reason text)",
        "CREATE INDEX CONCURRENTLY ix_users_email ON users (email)",
        "DROP INDEX CONCURRENTLY IF EXISTS ix_users_email",
        "DROP SEQUENCE users_id_seq",
        "ALTER TABLE users ADD COLUMN email text",
        "ALTER TABLE users DROP CONSTRAINT users_email_key",
        "ALTER TABLE users ALTER COLUMN email DROP DEFAULT",
        "ALTER TABLE users ALTER email DROP NOT NULL",
        "ALTER TABLE users ALTER COLUMN email SET DEFAULT ''",
        "ALTER TABLE users ALTER COLUMN type SET DEFAULT 'x'",
        "ALTER TABLE users ALTER CONSTRAINT fk DEFERRABLE",
        "ALTER TABLE users RENAME CONSTRAINT a TO b",
        "ALTER TABLE users VALIDATE CONSTRAINT users_org_fk",
        "ALTER TABLE ALL IN TABLESPACE a SET TABLESPACE b",
        'ALTER TABLE users ADD COLUMN "drop column" int',
        "ALTER INDEX ix RENAME TO ix2",
        "COMMENT ON TABLE users IS 'DROP TABLE users; ALTER TABLE x DROP COLUMN y'",
        "CREATE FUNCTION f() RETURNS int AS $$ DROP TABLE users $$ LANGUAGE sql",
        "GRANT SELECT ON users TO reader",
        "ALTER TABLE users ADD COLUMN x int -- DROP COLUMN y",
    ],
)
def test_expand_statements(sql: str) -> None:
    assert classify_statement(sql) is Phase.EXPAND


def test_any_contract_action_in_a_multi_action_alter_makes_it_contract() -> None:
    assert (
        classify_statement(
            "ALTER TABLE users ADD COLUMN a numeric(10, 2), ALTER COLUMN b SET NOT NULL, "
            "DROP COLUMN c"
        )
        is Phase.CONTRACT
    )
    assert (
        classify_statement(
            "ALTER TABLE users ADD COLUMN a numeric(10, 2), DROP CONSTRAINT c, "
            "ALTER COLUMN b DROP DEFAULT"
        )
        is Phase.EXPAND
    )


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO users (id) VALUES (1)",
        "update users set email = lower(email)",
        "DELETE FROM users WHERE id = 1",
        "COPY users FROM STDIN",
        "MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN DO NOTHING",
        "TRUNCATE users",
        "WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved",
    ],
)
def test_data_statements(sql: str) -> None:
    assert classify_statement(sql) is Phase.DATA


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO alembic_version (version_num) VALUES ('abc123')",
        "UPDATE alembic_version SET version_num='def456' WHERE alembic_version.version_num = 'abc'",
        "DELETE FROM public.\"alembic_version\" WHERE version_num = 'abc'",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
        "ALTER TABLE alembic_version ALTER COLUMN version_num TYPE VARCHAR(255)",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "START TRANSACTION",
        "SET lock_timeout = '5s'",
        "SET LOCAL statement_timeout = 0",
        "RESET ALL",
        "SELECT pg_sleep(0)",
        "SHOW server_version",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "-- only a comment",
        "",
    ],
)
def test_statements_without_phase(sql: str) -> None:
    assert classify_statement(sql) is None


def test_alembic_version_in_a_string_does_not_hide_a_data_statement() -> None:
    assert classify_statement("INSERT INTO audit (note) VALUES ('alembic_version')") is Phase.DATA


def test_keywords_inside_strings_and_identifiers_do_not_count() -> None:
    assert classify_statement("INSERT INTO t VALUES ('DROP TABLE t')") is Phase.DATA
    assert classify_statement('CREATE TABLE "DROP TABLE" (id int)') is Phase.EXPAND


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        (["CREATE TABLE a (id int)", "UPDATE a SET id = 1", "DROP TABLE b"], Phase.CONTRACT),
        (["UPDATE a SET id = 1", "CREATE INDEX ix ON a (id)"], Phase.EXPAND),
        (
            ["BEGIN", "UPDATE a SET id = 1", "UPDATE alembic_version SET version_num='x'"],
            Phase.DATA,
        ),
        (["SET lock_timeout = '1s'", "INSERT INTO alembic_version VALUES ('x')"], Phase.EXPAND),
        ([], Phase.EXPAND),
    ],
)
def test_derive_phase(statements: list[str], expected: Phase) -> None:
    assert derive_phase(statements) is expected


def test_derive_phase_accepts_a_generator() -> None:
    assert derive_phase(s for s in ["DELETE FROM a"]) is Phase.DATA


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (None, Phase.CONTRACT),
        ("expand", Phase.EXPAND),
        ("DATA", Phase.DATA),
        (" contract ", Phase.CONTRACT),
        (Phase.EXPAND, Phase.EXPAND),
    ],
)
def test_resolve_phase(override: object, expected: Phase) -> None:
    assert resolve_phase(Phase.CONTRACT, override) is expected


@pytest.mark.parametrize("override", ["shrink", "", 1, True, ["expand"]])
def test_resolve_phase_rejects_bad_overrides(override: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve_phase(Phase.EXPAND, override)
    message = str(excinfo.value)
    assert "releasegate_phase" in message
    assert "expand, contract, data" in message


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("VARCHAR(250)", "VARCHAR(5000)"),
        ("VARCHAR(250)", "VARCHAR(250)"),
        ("BOOLEAN", "BOOLEAN"),
        ("timestamp with time zone", "TIMESTAMP WITH TIME ZONE"),
        ("VARCHAR(250)", "TEXT"),
        ("VARCHAR(250)", "VARCHAR"),
        ("TEXT", "VARCHAR"),
        ("CHARACTER VARYING(20)", "VARCHAR(40)"),
        ("NUMERIC(10, 2)", "NUMERIC(12, 2)"),
        ("NUMERIC(10, 2)", "NUMERIC"),
        ("NUMERIC(10)", "DECIMAL(12, 0)"),
    ],
)
def test_type_changes_without_rewrite_are_expand(old: str, new: str) -> None:
    assert type_change_phase(old, new) is Phase.EXPAND


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("VARCHAR(5000)", "VARCHAR(250)"),
        ("TEXT", "VARCHAR(250)"),
        ("VARCHAR", "VARCHAR(250)"),
        ("INTEGER", "BIGINT"),
        ("NUMERIC(10, 2)", "NUMERIC(12, 3)"),
        ("NUMERIC", "NUMERIC(10, 2)"),
        ("NUMERIC(10, 2)", "NUMERIC(8, 2)"),
        ("VARCHAR(10)", 'VARCHAR(20) COLLATE "C"'),
        (None, "VARCHAR(5000)"),
    ],
)
def test_type_changes_that_rewrite_or_narrow_are_contract(old: str | None, new: str) -> None:
    assert type_change_phase(old, new) is Phase.CONTRACT


def test_a_using_clause_makes_any_type_change_contract() -> None:
    assert type_change_phase("BOOLEAN", "BOOLEAN", has_using=True) is Phase.CONTRACT


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("ALTER TABLE t ALTER COLUMN c TYPE VARCHAR(5000)", True),
        ("ALTER TABLE public.t ALTER c SET DATA TYPE text", True),
        ("ALTER TABLE t ALTER COLUMN a TYPE text, ALTER COLUMN b TYPE text", True),
        ("ALTER TABLE t ALTER COLUMN c TYPE text, DROP COLUMN d", False),
        ("ALTER TABLE t RENAME type TO kind", False),
        ("ALTER TABLE t ALTER COLUMN type SET NOT NULL", False),
        ("ALTER TABLE ALL IN TABLESPACE a SET TABLESPACE b", False),
        ("CREATE TABLE t (c text)", False),
    ],
)
def test_is_type_change(sql: str, expected: bool) -> None:
    assert is_type_change(sql) is expected


def test_unknown_is_the_most_restrictive_phase_and_waits_for_promotion() -> None:
    assert most_restrictive([Phase.DATA, Phase.UNKNOWN, Phase.CONTRACT, None]) is Phase.UNKNOWN
    assert most_restrictive([None]) is Phase.EXPAND
    assert [p for p in Phase if p.runs_before_promotion] == [Phase.EXPAND, Phase.DATA]


def test_unknown_cannot_be_declared() -> None:
    with pytest.raises(ConfigError, match="expected one of expand, contract, data"):
        resolve_phase(Phase.EXPAND, "unknown")
    with pytest.raises(ConfigError):
        resolve_phase(Phase.EXPAND, Phase.UNKNOWN)
