"""The ``releasegate`` command as a user runs it: exit codes and one-line errors.

Every failure must end in exactly one ``error:`` line on stderr, with the documented
exit status, no traceback, and never the database password.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from releasegate.lock import release_lock

if TYPE_CHECKING:
    from conftest import Project  # the `project` fixture's type

FAKE_PASSWORD = "e2e-Fake-Pw-7731"


def _releasegate_script() -> str:
    script = Path(sys.executable).parent / "releasegate"
    if script.is_file():
        return str(script)
    found = shutil.which("releasegate")
    assert found, "the releasegate console script is not installed"
    return found


RELEASEGATE = _releasegate_script()


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str
    secret: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def fake_url(project: Project) -> str:
    """The project's URL with a distinctive password, for runs that never connect."""
    return with_password(project.url, FAKE_PASSWORD)


def run(
    project: Project,
    *args: str,
    env: dict[str, str | None] | None = None,
    timeout: float = 120,
) -> Result:
    """Run the CLI in the project folder; ``env`` values of None remove a variable."""
    environ = {
        key: value
        for key, value in project.env.items()
        if not key.startswith("RELEASEGATE_") or key == "RELEASEGATE_CONFIG"
    }
    environ["RELEASEGATE_PERFORMER"] = "e2e-cli"
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    completed = subprocess.run(
        [RELEASEGATE, *args],
        cwd=project.root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    # The password this run was given, if any: it must never be printed.
    secret = urlsplit(environ.get(project.url_env) or "").password or ""
    return Result(completed.returncode, completed.stdout, completed.stderr, secret)


def assert_clean(result: Result) -> None:
    """No traceback and no password anywhere in the output."""
    assert "Traceback" not in result.output
    if result.secret:
        assert result.secret not in result.output


def assert_error(result: Result, code: int, *fragments: str) -> str:
    """Exit ``code``, exactly one ``error:`` line on stderr containing ``fragments``."""
    assert result.code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert_clean(result)
    return lines[0]


# -- config errors (exit 2) ----------------------------------------------------------


def test_missing_config_file_named_by_environment(project: Project) -> None:
    missing = project.root / "missing.toml"
    result = run(
        project,
        "migrate",
        "status",
        env={"RELEASEGATE_CONFIG": str(missing), project.url_env: fake_url(project)},
    )
    assert_error(result, 2, "config file not found", "missing.toml")


def test_missing_config_file_in_working_directory(project: Project) -> None:
    project.config_path.unlink()
    result = run(
        project,
        "config",
        "check",
        env={"RELEASEGATE_CONFIG": None, project.url_env: fake_url(project)},
    )
    assert_error(result, 2, "config file not found: releasegate.toml")


def test_malformed_toml(project: Project) -> None:
    project.write_config('[service\nname = "notes"\n')
    result = run(project, "migrate", "status", env={project.url_env: fake_url(project)})
    assert_error(result, 2, "releasegate.toml: invalid TOML", "line 1")


def test_unknown_key_names_key_and_file(project: Project) -> None:
    text = project.config_path.read_text()
    project.write_config(text.replace('wait = "1s"', 'wait = "1s"\nwiat = "2s"'))
    result = run(project, "migrate", "up", env={project.url_env: fake_url(project)})
    assert_error(result, 2, "releasegate.toml", "unknown key 'lock.wiat'")


def test_unknown_override_names_the_variable(project: Project) -> None:
    result = run(
        project,
        "config",
        "check",
        env={"RELEASEGATE_LOCK__WIAT": "2s", project.url_env: fake_url(project)},
    )
    assert_error(result, 2, "unknown key 'lock.wiat'", "RELEASEGATE_LOCK__WIAT")


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        f"mysql://app:{FAKE_PASSWORD}@127.0.0.1:3306/notes",
        f"postgresql://app:{FAKE_PASSWORD}@127.0.0.1:notaport/notes",
        f"postgresql://app:{FAKE_PASSWORD}@127.0.0.1:5432",
    ],
)
def test_bad_database_url(project: Project, url: str) -> None:
    result = run(project, "migrate", "status", env={project.url_env: url})
    line = assert_error(result, 2, f"${project.url_env} is malformed")
    assert FAKE_PASSWORD not in result.output
    # The explanation itself must survive redaction intact.
    assert "***" not in line


@pytest.mark.parametrize(
    "command", [("migrate", "status"), ("migrate", "up"), ("history",), ("config", "check")]
)
@pytest.mark.parametrize("value", [None, ""])
def test_url_environment_variable_unset(
    project: Project, command: tuple[str, ...], value: str | None
) -> None:
    result = run(project, *command, env={project.url_env: value})
    assert_error(result, 2, f"environment variable {project.url_env}", "is not set")


def test_migrations_folder_missing(project: Project) -> None:
    shutil.rmtree(project.root / "migrations")
    result = run(project, "migrate", "status", env={project.url_env: fake_url(project)})
    assert_error(result, 2, "migrations folder not found", "migrations.postgres")


@pytest.mark.parametrize("command", ["status", "up"])
def test_revision_file_with_syntax_error(project: Project, command: str) -> None:
    (project.versions / "0007_broken.py").write_text(
        'revision = "0007"\ndown_revision = "0006"\n\ndef upgrade(:\n    pass\n'
    )
    result = run(project, "migrate", command, env={project.url_env: fake_url(project)})
    assert_error(result, 2, "0007_broken.py", "syntax error", "line 4")


# -- infrastructure (exit 3) ---------------------------------------------------------


@pytest.mark.parametrize("command", [("migrate", "status"), ("migrate", "up"), ("history",)])
def test_database_unreachable(project: Project, command: tuple[str, ...]) -> None:
    url = f"postgresql://releasegate:{FAKE_PASSWORD}@127.0.0.1:1/notes"
    result = run(project, *command, env={project.url_env: url})
    assert_error(result, 3, "cannot reach Postgres at 127.0.0.1:1/notes")


def test_lock_held_by_another_runner(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = f"e2e-holder-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("RELEASEGATE_PERFORMER", holder)
    with release_lock(project.url, project.service, "e2e hold", wait=0):
        result = run(project, "migrate", "up", env={"RELEASEGATE_LOCK__WAIT": "300ms"})
    line = assert_error(result, 3, f"release lock for service '{project.service}'")
    # The holder's application_name is "releasegate/lock e2e hold <performer>".
    assert f"/lock e2e hold {holder}" in line
    assert "waited 300ms" in line
    assert "e2e-cli" not in line
    # Nothing was applied.
    status = run(project, "migrate", "status", "--json")
    assert status.code == 0, status.output
    assert json.loads(status.stdout)["postgres"]["state"] == "never_migrated"


# -- state problems (exit 1) ---------------------------------------------------------


def _set_database_revision(url: str, revision: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE alembic_version ("
            " version_num varchar(32) NOT NULL CONSTRAINT alembic_version_pkc PRIMARY KEY)"
        )
        conn.execute("INSERT INTO alembic_version VALUES (%s)", (revision,))


def test_database_at_unknown_revision(project: Project) -> None:
    _set_database_revision(project.url, "0099")
    status = run(project, "migrate", "status")
    assert status.code == 1, status.output
    assert status.stderr == ""
    assert "current:  0099" in status.stdout
    assert "ahead of the code" in status.stdout
    assert_clean(status)

    up = run(project, "migrate", "up")
    assert_error(up, 1, "revision 0099", "ahead of the code")


def test_multiple_heads(project: Project) -> None:
    (project.versions / "0006b_parallel_branch.py").write_text(
        '"""A second branch off 0005."""\n\n'
        'revision = "0006b"\ndown_revision = "0005"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n    pass\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )
    status = run(project, "migrate", "status")
    assert_error(status, 2, "2 heads", "merge")
    assert "state:    multiple heads" in status.stdout

    up = run(project, "migrate", "up")
    assert_error(up, 2, "2 heads", "0006", "0006b")


# -- debug ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["option", "environment"])
def test_debug_shows_the_traceback(project: Project, how: str) -> None:
    text = project.config_path.read_text()
    project.write_config(text.replace('wait = "1s"', 'wait = "1s"\nwiat = "2s"'))
    args = ["--debug", "config", "check"] if how == "option" else ["config", "check"]
    env: dict[str, str | None] = {project.url_env: fake_url(project)}
    if how == "environment":
        env["RELEASEGATE_DEBUG"] = "1"
    result = run(project, *args, env=env)
    assert result.code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConfigError" in result.stderr
    assert result.stderr.splitlines()[-1] == "error: releasegate.toml: unknown key 'lock.wiat'"
    assert FAKE_PASSWORD not in result.output


# -- success paths -------------------------------------------------------------------


def test_help_lists_the_command_groups(project: Project) -> None:
    result = run(project, "--help")
    assert result.code == 0
    assert result.stderr == ""
    commands = result.stdout.split("Commands:", 1)[1].split()
    for command in ("migrate", "history", "config"):
        assert command in commands
    assert "Exit codes" in result.stdout


def test_config_check_masks_the_password(project: Project) -> None:
    url = fake_url(project)
    masked = with_password(project.url, "***")
    table = run(project, "config", "check", env={project.url_env: url})
    assert table.code == 0, table.output
    assert masked in table.stdout
    assert f"service.name                  {project.service}" in table.stdout

    as_json = run(project, "config", "check", "--json", env={project.url_env: url})
    assert as_json.code == 0, as_json.output
    resolved = json.loads(as_json.stdout)
    assert resolved["postgres"]["url"] == masked
    assert resolved["lock"]["wait"] == 1.0
    for result in (table, as_json):
        assert FAKE_PASSWORD not in result.output
        assert result.stderr == ""


def test_migrate_up_then_history(project: Project) -> None:
    revisions = sorted(p.name.split("_", 1)[0] for p in project.versions.glob("[0-9]*.py"))
    assert revisions[-1] == "0006"

    up = run(project, "migrate", "up")
    assert up.code == 0, up.output
    assert up.stderr == ""
    assert f"never migrated -> {revisions[-1]}" in up.stdout
    assert_clean(up)

    history = run(project, "history", "--json")
    assert history.code == 0, history.output
    assert_clean(history)
    [release] = json.loads(history.stdout)
    assert release["service"] == project.service
    assert release["kind"] == "migrate"
    assert release["outcome"] == "succeeded"
    assert release["performer"] == "e2e-cli"
    assert (release["alembic_before"], release["alembic_after"]) == ("never migrated", "0006")
    assert release["summary"] == {"direction": "up", "revisions": revisions}
    steps = [(e["step"], e["status"]) for e in release["events"]]
    assert steps == [("lock", "ok")] + [(f"upgrade {rev}", "ok") for rev in revisions]

    again = run(project, "migrate", "up")
    assert again.code == 0, again.output
    assert "postgres: 0006 -> 0006 (nothing to do)" in again.stdout
    assert len(json.loads(run(project, "history", "--json").stdout)) == 2
