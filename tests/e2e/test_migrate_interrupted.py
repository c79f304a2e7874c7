"""``migrate up`` stopped half way: by SIGTERM or Ctrl-C, by sys.exit in user code, by SIGKILL.

Every way out closes the ledger row (``aborted`` or ``failed``) with what actually
committed; an interrupt is one ``error:`` line and exit 130; a row left ``running`` by a
killed runner is shown as ``interrupted`` because nobody holds the release lock.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from test_cli_errors import RELEASEGATE, assert_clean, run

from releasegate.lock import find_holder

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Project

SLEEP = "SELECT pg_sleep(20)"


def write_revision(versions: Path, revision: str, down: str, body: str) -> None:
    (versions / f"{revision}_e2e.py").write_text(
        f'"""Revision {revision} of the test."""\n\n'
        "from alembic import op\n\n"
        f'revision = "{revision}"\ndown_revision = "{down}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n    {body}\n\n\n"
        "def downgrade() -> None:\n    pass\n",
        encoding="utf-8",
    )


def start(project: Project, *args: str) -> subprocess.Popen[str]:
    environ = {
        key: value
        for key, value in project.env.items()
        if not key.startswith("RELEASEGATE_") or key == "RELEASEGATE_CONFIG"
    }
    environ["RELEASEGATE_PERFORMER"] = "e2e-signals"
    return subprocess.Popen(
        [RELEASEGATE, *args],
        cwd=project.root,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sleeping_backends(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = %s AND state = 'active' AND pid <> pg_backend_pid()",
            (SLEEP,),
        ).fetchone()
        return int(row[0]) if row else 0


def wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def newest_release(project: Project) -> dict[str, Any]:
    history = run(project, "history", "--json", "--limit", "1")
    assert history.code == 0, history.output
    [release] = json.loads(history.stdout)
    return release


def steps(release: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["step"], e["status"]) for e in release["events"]]


def _up_to_0006_then_a_slow_0008(project: Project) -> None:
    assert run(project, "migrate", "up").code == 0
    write_revision(
        project.versions, "0007", "0006", 'op.execute("CREATE TABLE e2e_seven (id int)")'
    )
    write_revision(project.versions, "0008", "0007", f'op.execute("{SLEEP}")')


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "how"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")]
)
def test_a_signal_during_migrate_up_closes_the_row_aborted_and_exits_130(
    project: Project, signum: signal.Signals, how: str
) -> None:
    _up_to_0006_then_a_slow_0008(project)
    proc = start(project, "migrate", "up")
    try:
        wait_until(lambda: sleeping_backends(project.url) == 1, "revision 0008 to run")
        assert newest_release(project)["outcome"] == "running"  # its runner holds the lock
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 130, stdout + stderr
    assert len(stderr.splitlines()) == 1, stderr
    [line] = stderr.splitlines()
    release = newest_release(project)
    assert line == (
        f"error: interrupted by {how} during migrate up: the database is at 0007"
        f" (ledger release {release['id']}, aborted)"
    )
    assert "up   0007             ok" in stdout
    # The row says what committed: 0007, not 0008, whose statement was cancelled.
    assert release["outcome"] == "aborted"
    assert release["finished_at"] is not None
    assert (release["alembic_before"], release["alembic_after"]) == ("0006", "0007")
    assert steps(release) == [("lock", "ok"), ("upgrade 0007", "ok"), ("upgrade 0008", "failed")]
    assert release["events"][-1]["detail"]["error"] == f"interrupted by {how}"
    assert release["summary"]["revisions"] == ["0007"]
    wait_until(lambda: sleeping_backends(project.url) == 0, "the cancelled statement to end", 5)
    with psycopg.connect(project.url) as conn:
        assert find_holder(conn, project.service) is None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row == ("0007",)


def _exit_in_env_py_after(project: Project, revision: str, code: int) -> None:
    """env.py calls sys.exit after the migration of ``revision`` has committed."""
    env_py = project.root / "migrations" / "postgres" / "env.py"
    env_py.write_text(
        env_py.read_text()
        + "\n\nif shared_connection is not None and not context.is_offline_mode():\n"
        "    from alembic.runtime.migration import MigrationContext\n\n"
        "    heads = MigrationContext.configure(shared_connection).get_current_heads()\n"
        f"    if {revision!r} in heads:\n"
        f"        raise SystemExit({code})\n"
    )


def test_sys_exit_in_env_py_after_a_commit_records_the_committed_revision(
    project: Project,
) -> None:
    _exit_in_env_py_after(project, "0002", 5)
    result = run(project, "migrate", "up")
    release = newest_release(project)
    assert result.code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line == (
        "error: revision 0002 committed, then its code failed: SystemExit: the migration"
        " code called sys.exit(5); the database is at 0002"
        f" (ledger release {release['id']})"
    )
    assert_clean(result)
    assert release["outcome"] == "failed"
    assert release["alembic_after"] == "0002"
    assert steps(release) == [("lock", "ok"), ("upgrade 0001", "ok"), ("upgrade 0002", "ok")]


def test_sys_exit_inside_a_revision_is_a_failed_revision(project: Project) -> None:
    assert run(project, "migrate", "up").code == 0
    write_revision(project.versions, "0007", "0006", "raise SystemExit(5)")
    result = run(project, "migrate", "up")
    release = newest_release(project)
    assert result.code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: revision 0007 failed: SystemExit: the migration code called")
    assert line.endswith(f"the database stays at 0006 (ledger release {release['id']})")
    assert release["outcome"] == "failed"
    assert release["alembic_after"] == "0006"
    assert steps(release) == [("lock", "ok"), ("upgrade 0007", "failed")]


@pytest.mark.slow
def test_a_killed_runner_leaves_a_row_shown_as_interrupted(project: Project) -> None:
    _up_to_0006_then_a_slow_0008(project)
    proc = start(project, "migrate", "up")
    try:
        wait_until(lambda: sleeping_backends(project.url) == 1, "revision 0008 to run")
        proc.kill()  # SIGKILL: no handler runs, the row stays "running" in the table
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    with psycopg.connect(project.url) as conn:
        wait_until(lambda: find_holder(conn, project.service) is None, "the lock to be freed")
        stored = conn.execute(
            "SELECT outcome FROM releasegate.releases ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert stored == ("running",)  # kept for 'release --resume'
    release = newest_release(project)
    assert release["outcome"] == "interrupted"
    table = run(project, "history")
    assert table.code == 0, table.output
    assert "interrupted" in table.stdout.splitlines()[2]
    status = run(project, "status", "--json")
    assert json.loads(status.stdout)["last_release"]["outcome"] == "interrupted", status.output
