"""Passwords in store URLs, as a user writes them: decoded for client programs, never shown.

A percent-encoded password must reach ``pg_dump``/``pg_restore`` decoded; a raw
``@ : / % ? #`` in a password makes the URL ambiguous and is refused with the rule before
anything touches a store; no piece of a password may appear in any output.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from test_cli_errors import assert_error, run, with_password

if TYPE_CHECKING:
    from conftest import Project

RULE = "percent-encode @ : / % ? # in the password"
# Pieces around the special character: none of them may be printed.
AMBIGUOUS = ["Qz7tk9/mWv4Lp", "Qz7tk9@mWv4Lp", "Qz7tk9%mWv4Lp", "Qz7tk9?mWv4Lp", "Qz7tk9#mWv4Lp"]
PIECES = ("Qz7tk9", "mWv4Lp")


def _percent_encoded(text: str) -> str:
    """Every byte as %XX: the most encoded spelling of a password."""
    return "".join(f"%{byte:02X}" for byte in text.encode())


def _ledger_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('releasegate.releases') IS NOT NULL").fetchone()
        return bool(row and row[0])


@pytest.mark.parametrize("password", AMBIGUOUS)
@pytest.mark.parametrize(
    "command", [("config", "check"), ("migrate", "status"), ("migrate", "up"), ("history",)]
)
def test_a_raw_special_character_in_the_password_is_one_error_naming_the_rule(
    project: Project, password: str, command: tuple[str, ...]
) -> None:
    result = run(project, *command, env={project.url_env: with_password(project.url, password)})
    assert_error(result, 2, f"${project.url_env} is malformed", RULE)
    for piece in PIECES:
        assert piece not in result.output
    assert not _ledger_exists(project.url)  # refused before anything touched the database


def test_a_raw_special_character_in_a_redis_password_is_refused(project: Project) -> None:
    project.write_config(
        project.config_path.read_text() + '\n[redis]\nurl_env = "NOTES_REDIS_URL"\n'
    )
    (project.root / "migrations" / "redis").mkdir()
    for password in AMBIGUOUS:
        url = f"redis://:{password}@127.0.0.1:6390/0"
        for command in (("config", "check"), ("migrate", "status", "--store", "redis")):
            result = run(project, *command, env={"NOTES_REDIS_URL": url})
            assert_error(result, 2, "$NOTES_REDIS_URL is malformed", RULE)
            for piece in PIECES:
                assert piece not in result.output


def test_a_percent_encoded_password_reaches_pg_dump_and_pg_restore(project: Project) -> None:
    password = urlsplit(project.url).password
    assert password
    encoded_url = with_password(project.url, _percent_encoded(password))
    env = {project.url_env: encoded_url}
    project.write_config(project.config_path.read_text() + '\n[backup]\ndir = "backups"\n')

    migrated = run(project, "migrate", "up", env=env)
    assert migrated.code == 0, migrated.output
    created = run(project, "backup", "create", "--json", env=env)
    assert created.code == 0, created.output
    assert json.loads(created.stdout)["versions"]["alembic"] == "0006"
    verified = run(project, "backup", "verify", "latest", env=env)
    assert verified.code == 0, verified.output
    assert "postgres: ok" in verified.stdout
    for result in (migrated, created, verified):
        assert password not in result.output
        assert _percent_encoded(password) not in result.output


def test_a_password_in_the_query_string_works_and_is_masked(project: Project) -> None:
    parts = urlsplit(project.url)
    password = parts.password
    assert password
    netloc = f"{parts.username}@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit((parts.scheme, netloc, parts.path, f"password={password}", ""))
    env = {project.url_env: url}
    project.write_config(project.config_path.read_text() + '\n[backup]\ndir = "backups"\n')

    checked = run(project, "config", "check", "--json", env=env)
    assert checked.code == 0, checked.output
    assert json.loads(checked.stdout)["postgres"]["url"].endswith("?password=***")
    assert run(project, "migrate", "up", env=env).code == 0
    created = run(project, "backup", "create", env=env)
    assert created.code == 0, created.output
    for result in (checked, created):
        assert password not in result.output
