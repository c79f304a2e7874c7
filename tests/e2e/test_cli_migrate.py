"""``releasegate migrate plan|test|up|verify|status`` and ``history``, run as a user runs them.

Every command is the installed console script in a child process, on a copy of the
example project pointed at a fresh database of the real Postgres server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from conftest import Project

RELEASEGATE = Path(sys.executable).parent / "releasegate"
EXAMPLE_REVISIONS = ["0001", "0002", "0003", "0004", "0005", "0006"]


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def releasegate(project: Project, *args: str, **env: str) -> Run:
    proc = subprocess.run(
        [str(RELEASEGATE), *args],
        cwd=project.root,
        env={**project.env, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return Run(args, proc.returncode, proc.stdout, proc.stderr)


def assert_no_password(project: Project, runs: list[Run]) -> None:
    password = urlsplit(project.url).password
    assert password, "the test database URL carries no password to look for"
    for run in runs:
        # click's usage messages name the program itself, which the test server's
        # password may happen to equal; anything else the CLI prints is looked at whole.
        name = RELEASEGATE.name
        text = run.output.replace(f"Usage: {name} ", "Usage: ").replace(f"'{name} ", "'")
        assert password not in text, run.args
        assert f":{password}@" not in run.output, run.args


def test_plan_from_base_in_every_format(project: Project) -> None:
    as_json = releasegate(project, "migrate", "plan", "--from", "base", "--json")
    as_markdown = releasegate(project, "migrate", "plan", "--from", "base", "--markdown")
    as_text = releasegate(project, "migrate", "plan", "--from", "base")
    runs = [as_json, as_markdown, as_text]

    assert as_json.code == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert [r["revision"] for r in data["revisions"]] == EXAMPLE_REVISIONS
    assert data["contract_revisions"] == ["0006"]
    assert data["lint_failed"] is False

    assert as_markdown.code == 0, as_markdown.stderr
    assert "| revision | phase | irreversible | findings | description |" in as_markdown.stdout
    assert "|---|" in as_markdown.stdout
    assert "contract" in as_markdown.stdout

    assert as_text.code == 0, as_text.stderr
    assert "ban-drop-column" in as_text.stdout
    assert "contract revisions (cannot be rolled back automatically): 0006" in as_text.stdout
    assert_no_password(project, runs)


def test_plan_fails_at_the_configured_lint_threshold(project: Project) -> None:
    strict = releasegate(
        project, "migrate", "plan", "--from", "base", RELEASEGATE_LINT__FAIL_ON="warning"
    )

    assert strict.code == 1, strict.output
    assert "ban-drop-column" in strict.stdout
    assert "fail_on = warning" in strict.stdout
    assert_no_password(project, [strict])


def test_plan_refuses_two_output_formats(project: Project) -> None:
    both = releasegate(project, "migrate", "plan", "--from", "base", "--json", "--markdown")

    assert both.code == 2
    assert "--json and --markdown exclude each other" in both.stderr
    assert both.stdout == ""
    assert_no_password(project, [both])


def test_test_command_passes_the_example_chain(project: Project) -> None:
    text = releasegate(project, "migrate", "test")
    as_json = releasegate(project, "migrate", "test", "--json")

    assert text.code == 0, text.output
    assert "irreversible: 0005" in text.stdout
    assert "drift: 0 difference(s)" in text.stdout
    assert "downgraded to: 0005" in text.stdout
    assert "passed in" in text.stdout

    assert as_json.code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert report["irreversible"] == ["0005"]
    assert [r["revision"] for r in report["revisions"]] == EXAMPLE_REVISIONS
    assert_no_password(project, [text, as_json])


def test_up_then_verify_then_a_hotfix_fails_verify(project: Project) -> None:
    migrated = releasegate(project, "migrate", "up")
    assert migrated.code == 0, migrated.output
    assert "never migrated -> 0006" in migrated.stdout

    clean = releasegate(project, "migrate", "verify")
    assert clean.code == 0, clean.output
    assert "schema matches the migrations" in clean.stdout

    with psycopg.connect(project.url, autocommit=True) as conn:
        conn.execute("CREATE INDEX hotfix ON documents (title)")
    drifted = releasegate(project, "migrate", "verify")
    drifted_json = releasegate(project, "migrate", "verify", "--json")

    assert drifted.code == 1, drifted.output
    assert "unexpected index public.hotfix" in drifted.stdout
    assert "schema matches the migrations" not in drifted.stdout
    assert drifted_json.code == 1
    data = json.loads(drifted_json.stdout)
    assert data["ok"] is False
    assert [(d["kind"], d["key"]) for d in data["differences"]] == [
        ("unexpected", "index public.hotfix")
    ]
    assert_no_password(project, [migrated, clean, drifted, drifted_json])


def test_status_and_history_after_up(project: Project) -> None:
    before = releasegate(project, "migrate", "status")
    migrated = releasegate(project, "migrate", "up", "--json")
    after = releasegate(project, "migrate", "status")
    history = releasegate(project, "history", "--json")

    assert before.code == 0, before.output
    assert "never migrated" in before.stdout
    assert "pending:  6" in before.stdout

    assert migrated.code == 0, migrated.output
    release_id = json.loads(migrated.stdout)["postgres"]["release_id"]

    assert after.code == 0, after.output
    assert "state:    up to date" in after.stdout
    assert "current:  0006" in after.stdout
    assert "pending" not in after.stdout

    assert history.code == 0, history.output
    releases = json.loads(history.stdout)
    assert [r["id"] for r in releases] == [release_id]
    (release,) = releases
    assert release["service"] == project.service
    assert release["kind"] == "migrate"
    assert release["outcome"] == "succeeded"
    assert release["alembic_before"] == "never migrated"
    assert release["alembic_after"] == "0006"
    upgraded = [e["step"] for e in release["events"] if e["step"].startswith("upgrade ")]
    assert upgraded == [f"upgrade {rev}" for rev in EXAMPLE_REVISIONS]
    assert_no_password(project, [before, migrated, after, history])


def write_revision(project: Project, revision: str, down_revision: str, upgrade: str) -> None:
    """A revision file whose downgrade() undoes nothing, in the example project's copy."""
    (project.versions / f"{revision}_cli_test.py").write_text(
        f'"""Revision {revision}."""\n\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "{revision}"\ndown_revision = "{down_revision}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n    {upgrade}\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


def test_plan_lists_a_revision_that_needs_a_live_connection(project: Project) -> None:
    write_revision(project, "0007", "0006", 'op.get_bind().execute(sa.text("SELECT 1")).fetchall()')
    text = releasegate(project, "migrate", "plan", "--from", "base")
    as_json = releasegate(project, "migrate", "plan", "--from", "base", "--json")

    assert text.code == 0, text.output
    assert "internal error" not in text.output
    assert "0007  [unknown (derived)]" in text.stdout
    assert "SQL unavailable offline (needs a live connection)" in text.stdout
    assert "revisions of unknown phase" in text.stdout
    assert as_json.code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert [r["revision"] for r in data["revisions"]] == [*EXAMPLE_REVISIONS, "0007"]
    assert data["unknown_revisions"] == ["0007"]
    assert data["revisions"][-1]["runs_before_promotion"] is False
    assert_no_password(project, [text, as_json])


def test_plan_and_status_exit_2_on_multiple_heads(project: Project) -> None:
    write_revision(project, "0006b", "0005", "pass")
    assert releasegate(project, "migrate", "up", "--store", "postgres", "--to", "0006").code == 0

    runs = [
        releasegate(project, "migrate", "plan"),
        releasegate(project, "migrate", "plan", "--from", "base"),
        releasegate(project, "migrate", "status"),
    ]

    for run in runs:
        assert run.code == 2, run.output
        assert run.stderr.count("error:") == 1, run.stderr
        assert run.stderr.startswith("error: the migrations have 2 heads"), run.stderr
    status = runs[-1]
    assert "state:    multiple heads" in status.stdout
    assert "up to date" not in status.stdout
    assert "0006b" in status.stdout
    assert_no_password(project, runs)


def test_down_to_a_relative_target(project: Project) -> None:
    assert releasegate(project, "migrate", "up", "--store", "postgres", "--to", "0004").code == 0

    one = releasegate(project, "migrate", "down", "--to", "-1")
    two = releasegate(project, "migrate", "down", "--to=-2")

    assert one.code == 0, one.output
    assert "postgres: 0004 -> 0003" in one.stdout
    assert two.code == 0, two.output
    assert "postgres: 0003 -> 0001" in two.stdout
    assert_no_password(project, [one, two])


def test_two_revision_files_with_one_id_are_one_error_line(project: Project) -> None:
    (original,) = project.versions.glob("0006_*.py")
    (project.versions / "0006_copy.py").write_text(original.read_text())

    run = releasegate(project, "migrate", "plan", "--from", "base")

    assert run.code == 2, run.output
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"error: revision id 0006 is used by 2 files (0006_copy.py, {original.name}):"
        " give each revision its own id"
    ]


def test_test_keep_going_prints_every_revision(project: Project) -> None:
    write_revision(project, "0007", "0006", 'op.execute("ALTER TABLE nosuch ADD COLUMN x int")')
    write_revision(project, "0008", "0007", 'op.create_table("later", sa.Column("id", sa.Integer))')

    stopped = releasegate(project, "migrate", "test")
    going = releasegate(project, "migrate", "test", "--keep-going")

    assert stopped.code == 1, stopped.output
    assert "stairway stopped at 0007" in stopped.stdout
    assert going.code == 1, going.output
    # One table: a row for every revision, the failed one included.
    assert re.search(r"^0007 +failed +not run +not run ", going.stdout, re.MULTILINE)
    assert re.search(r"^0008 +ok +no-op \(leaves trace\) +not run ", going.stdout, re.MULTILINE)
    assert re.search(r"^0006 +ok +ok +ok ", going.stdout, re.MULTILINE)
    assert "stamped past 0007" in going.stdout
    assert_no_password(project, [stopped, going])
