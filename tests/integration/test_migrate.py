"""``migrate status/up/down`` on real databases: the core functions, not the CLI.

Each test gets the example project (revisions 0001..0006) copied to a temporary folder
and pointed at a fresh database; tests that need a failing, slow or blocked revision
write one more revision file into the copy. The database is checked with psycopg and
the release ledger with :class:`~releasegate.ledger.Ledger`.
"""

from __future__ import annotations

import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import psycopg
import pytest

from releasegate.errors import (
    ConfigError,
    ExitCode,
    LockNotObtained,
    MigrationFailed,
    MigrationScriptError,
    StateError,
    exit_code_for,
)
from releasegate.ledger import Ledger, Outcome, Release, StepStatus
from releasegate.lock import release_lock
from releasegate.migrations.commands import (
    DbState,
    Direction,
    MigrateResult,
    StepResult,
    down,
    status,
    up,
)

ALL_REVISIONS = ["0001", "0002", "0003", "0004", "0005", "0006"]

# Fast-failing lock settings for the lock_timeout tests.
QUICK_LOCK_TIMEOUT = {"RELEASEGATE_MIGRATIONS__LOCK_TIMEOUT": "200ms"}


# -- helpers ------------------------------------------------------------------------


def write_revision(
    versions: Path,
    revision: str,
    down_revision: str,
    upgrade: str,
    downgrade: str = "pass",
    doc: str = "A revision written by the test.",
) -> Path:
    """Add a revision file whose upgrade()/downgrade() bodies are the given statements."""
    path = versions / f"{revision}_test_revision.py"
    path.write_text(
        f'"""{doc}\n\nRevision ID: {revision}\nRevises: {down_revision}\n"""\n\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        f'revision = "{revision}"\n'
        f'down_revision = "{down_revision}"\n'
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        f"{textwrap.indent(textwrap.dedent(upgrade).strip(), '    ')}\n\n\n"
        "def downgrade() -> None:\n"
        f"{textwrap.indent(textwrap.dedent(downgrade).strip(), '    ')}\n",
        encoding="utf-8",
    )
    return path


def db_versions(url: str) -> list[str] | None:
    """The rows of alembic_version, sorted; ``None`` when the table does not exist."""
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()
        if exists is None or exists[0] is None:
            return None
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return sorted(row[0] for row in rows)


def columns(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %s",
            (table,),
        ).fetchall()
    return {row[0] for row in rows}


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def releases(url: str, service: str) -> list[Release]:
    """Every ledger release of ``service``, oldest first, with their events."""
    with Ledger.open(url) as ledger:
        return list(reversed(ledger.releases(service, limit=100, with_events=True)))


def last_release(url: str, service: str) -> Release:
    found = releases(url, service)
    assert found, "no release in the ledger"
    return found[-1]


def release_count(url: str) -> int:
    """Releases in the ledger, 0 when its schema was never created."""
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('releasegate.releases')").fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute("SELECT count(*) FROM releasegate.releases").fetchone()
    assert row is not None
    return int(row[0])


def step_events(release: Release, status_: StepStatus) -> dict[str, dict[str, Any]]:
    """``{step: detail}`` of the events with that status, the lock event left out."""
    return {e.step: e.detail for e in release.events if e.status == status_ and e.step != "lock"}


# -- status ---------------------------------------------------------------------------


def test_status_follows_the_database_through_up(project: Any) -> None:
    settings = project.settings()

    before = status(settings)
    assert before.state is DbState.NEVER_MIGRATED
    assert before.current is None
    assert [r.id for r in before.pending] == ALL_REVISIONS
    assert before.heads == ("0006",)
    assert before.ok

    up(settings, to="0003")
    middle = status(settings)
    assert middle.state is DbState.PENDING
    assert middle.current == ("0003",)
    assert [r.id for r in middle.pending] == ["0004", "0005", "0006"]

    up(settings)
    after = status(settings)
    assert after.state is DbState.UP_TO_DATE
    assert after.current == ("0006",)
    assert after.pending == []
    assert after.to_dict()["state"] == "up_to_date"


# -- up -------------------------------------------------------------------------------


def test_up_applies_every_revision_and_records_them(project: Any) -> None:
    seen: list[StepResult] = []

    result = up(project.settings(), on_step=seen.append)

    assert db_versions(project.url) == ["0006"]
    assert result.before is None
    assert result.after == ("0006",)
    assert [s.revision for s in result.steps] == ALL_REVISIONS
    # on_step: once per revision, in order, each one applied on the first attempt.
    assert [s.revision for s in seen] == ALL_REVISIONS
    assert all(s.status is StepStatus.OK and s.direction is Direction.UP for s in seen)
    assert all(s.attempts == 1 for s in seen)

    release = last_release(project.url, project.service)
    assert len(releases(project.url, project.service)) == 1
    assert release.id == result.release_id
    assert release.kind == "migrate"
    assert release.outcome == Outcome.SUCCEEDED
    assert release.alembic_before == "never migrated"
    assert release.alembic_after == "0006"
    assert release.finished_at is not None
    assert release.summary["revisions"] == ALL_REVISIONS

    lock_events = [e for e in release.events if e.step == "lock"]
    assert len(lock_events) == 1
    assert lock_events[0].status == StepStatus.OK
    assert lock_events[0].detail["service"] == project.service

    ok = [e for e in release.events if e.status == StepStatus.OK and e.step != "lock"]
    assert [e.step for e in ok] == [f"upgrade {rev}" for rev in ALL_REVISIONS]
    assert [e.detail["revision"] for e in ok] == ALL_REVISIONS
    assert all(e.duration_ms is not None and e.duration_ms > 0 for e in ok)
    assert ok[0].detail["doc"] == "Create users and documents."
    assert not step_events(release, StepStatus.FAILED)


def test_up_on_an_up_to_date_database_changes_nothing(project: Any) -> None:
    settings = project.settings()
    up(settings)

    again = up(settings)

    assert again.steps == []
    assert again.before == again.after == ("0006",)
    assert db_versions(project.url) == ["0006"]
    assert last_release(project.url, project.service).outcome == Outcome.SUCCEEDED


def test_up_backfills_display_name_and_lowercases_emails(project: Any) -> None:
    settings = project.settings()
    up(settings, to="0002")
    with psycopg.connect(project.url) as conn:
        conn.execute(
            "INSERT INTO users (email, full_name) VALUES"
            " ('Ada@Example.COM', 'Ada Lovelace'),"
            " ('GRACE@NAVY.MIL', 'Grace Hopper'),"
            " ('already@lower.example', 'Lower Case')"
        )

    up(settings)

    with psycopg.connect(project.url) as conn:
        rows = conn.execute("SELECT email, display_name FROM users ORDER BY id").fetchall()
    assert rows == [
        ("ada@example.com", "Ada Lovelace"),
        ("grace@navy.mil", "Grace Hopper"),
        ("already@lower.example", "Lower Case"),
    ]
    assert "full_name" not in columns(project.url, "users")


# -- down -----------------------------------------------------------------------------


def test_down_one_revision_from_head(project: Any) -> None:
    settings = project.settings()
    up(settings)
    seen: list[StepResult] = []

    result = down(settings, to="0005", on_step=seen.append)

    assert db_versions(project.url) == ["0005"]
    assert result.direction is Direction.DOWN
    assert result.before == ("0006",)
    assert result.after == ("0005",)
    assert [(s.revision, s.direction) for s in seen] == [("0006", Direction.DOWN)]
    # 0006's downgrade restores the contracted column.
    assert {"full_name", "display_name"} <= columns(project.url, "users")

    release = last_release(project.url, project.service)
    assert release.outcome == Outcome.SUCCEEDED
    assert release.alembic_before == "0006"
    assert release.alembic_after == "0005"
    assert list(step_events(release, StepStatus.OK)) == ["downgrade 0006"]
    assert status(settings).state is DbState.PENDING


def test_down_to_base_stops_at_the_irreversible_revision(project: Any) -> None:
    settings = project.settings()
    up(settings)

    with pytest.raises(MigrationFailed, match="irreversible") as info:
        down(settings, to="base")

    assert "0005" in str(info.value)
    assert "stays at 0005" in str(info.value)
    assert exit_code_for(info.value) == ExitCode.CHECK_FAILED
    assert db_versions(project.url) == ["0005"]
    assert "users" in tables(project.url)

    release = last_release(project.url, project.service)
    assert release.outcome == Outcome.FAILED
    assert release.alembic_before == "0006"
    assert release.alembic_after == "0005"
    assert release.summary["failed_revision"] == "0005"
    assert list(step_events(release, StepStatus.OK)) == ["downgrade 0006"]
    failed = step_events(release, StepStatus.FAILED)
    assert list(failed) == ["downgrade 0005"]
    assert "original case" in failed["downgrade 0005"]["error"]


def test_down_then_up_again_round_trips(project: Any) -> None:
    settings = project.settings()
    up(settings, to="0004")

    down(settings, to="base")
    assert db_versions(project.url) == []
    assert tables(project.url) == {"alembic_version"}

    up(settings)
    assert db_versions(project.url) == ["0006"]
    kinds = [(r.summary["direction"], r.outcome) for r in releases(project.url, project.service)]
    assert kinds == [("up", "succeeded"), ("down", "succeeded"), ("up", "succeeded")]


# -- refused targets ------------------------------------------------------------------


def test_targets_on_the_wrong_side_are_config_errors(project: Any) -> None:
    settings = project.settings()
    up(settings, to="0003")
    recorded = release_count(project.url)

    with pytest.raises(ConfigError, match="not below the current revision 0003"):
        down(settings, to="0005")
    up(settings)
    recorded += 1
    with pytest.raises(ConfigError, match="not above the current revision 0006") as info:
        up(settings, to="0003")

    assert info.value.exit_code == ExitCode.USAGE
    assert db_versions(project.url) == ["0006"]
    # A refused target opens no release.
    assert release_count(project.url) == recorded


@pytest.mark.parametrize("command", ["up", "down"])
def test_an_unknown_revision_is_a_config_error(project: Any, command: str) -> None:
    settings = project.settings()
    up(settings, to="0002")
    recorded = release_count(project.url)
    run = up if command == "up" else down

    with pytest.raises(ConfigError, match="unknown revision 'abcd'"):
        run(settings, to="abcd")

    assert db_versions(project.url) == ["0002"]
    assert release_count(project.url) == recorded


def test_down_to_head_is_refused(project: Any) -> None:
    settings = project.settings()
    up(settings)

    with pytest.raises(ConfigError, match="below the current one"):
        down(settings, to="head")
    assert db_versions(project.url) == ["0006"]


# -- a revision failing midway --------------------------------------------------------


FAILING_UPGRADE = """
    op.add_column("documents", sa.Column("doomed", sa.Text, nullable=True))
    op.execute("SELECT 1/0")
"""


def test_a_failing_revision_is_rolled_back_and_the_database_stays_at_the_last_good_one(
    project: Any,
) -> None:
    write_revision(project.versions, "0007", "0006", FAILING_UPGRADE)
    settings = project.settings()
    seen: list[StepResult] = []

    with pytest.raises(MigrationFailed, match="revision 0007 failed") as info:
        up(settings, on_step=seen.append)

    message = str(info.value)
    assert "DivisionByZero" in message
    assert "stays at 0006" in message
    # The revisions before it committed one by one; its own transaction was rolled back.
    assert db_versions(project.url) == ["0006"]
    assert "doomed" not in columns(project.url, "documents")
    assert [(s.revision, s.status) for s in seen] == [
        *((rev, StepStatus.OK) for rev in ALL_REVISIONS),
        ("0007", StepStatus.FAILED),
    ]

    release = last_release(project.url, project.service)
    assert f"ledger release {release.id}" in message
    assert release.outcome == Outcome.FAILED
    assert release.alembic_before == "never migrated"
    assert release.alembic_after == "0006"
    assert release.summary["failed_revision"] == "0007"
    assert list(step_events(release, StepStatus.OK)) == [f"upgrade {r}" for r in ALL_REVISIONS]
    failed = step_events(release, StepStatus.FAILED)
    assert list(failed) == ["upgrade 0007"]
    assert "division by zero" in failed["upgrade 0007"]["error"]
    assert failed["upgrade 0007"]["attempts"] == 1

    after = status(settings)
    assert after.state is DbState.PENDING
    assert [r.id for r in after.pending] == ["0007"]


def test_a_fixed_revision_applies_on_the_next_run(project: Any) -> None:
    broken = write_revision(project.versions, "0007", "0006", FAILING_UPGRADE)
    with pytest.raises(MigrationFailed):
        up(project.settings())
    broken.unlink()
    write_revision(
        project.versions,
        "0007",
        "0006",
        'op.add_column("documents", sa.Column("fixed", sa.Text, nullable=True))',
    )

    result = up(project.settings())

    assert [s.revision for s in result.steps] == ["0007"]
    assert db_versions(project.url) == ["0007"]
    assert "fixed" in columns(project.url, "documents")
    outcomes = [r.outcome for r in releases(project.url, project.service)]
    assert outcomes == [Outcome.FAILED, Outcome.SUCCEEDED]


def test_a_chain_stops_at_the_failing_revision(project: Any) -> None:
    up(project.settings())
    write_revision(
        project.versions,
        "0007",
        "0006",
        'op.add_column("documents", sa.Column("kept", sa.Text, nullable=True))',
    )
    write_revision(project.versions, "0008", "0007", FAILING_UPGRADE)

    with pytest.raises(MigrationFailed, match=r"revision 0008 failed.*stays at 0007"):
        up(project.settings())

    assert db_versions(project.url) == ["0007"]
    assert "kept" in columns(project.url, "documents")
    assert "doomed" not in columns(project.url, "documents")
    release = last_release(project.url, project.service)
    assert release.outcome == Outcome.FAILED
    assert release.alembic_before == "0006"
    assert release.alembic_after == "0007"
    assert list(step_events(release, StepStatus.OK)) == ["upgrade 0007"]
    assert list(step_events(release, StepStatus.FAILED)) == ["upgrade 0008"]


def test_the_ledger_is_written_on_a_connection_of_its_own(project: Any) -> None:
    # 0007 fails only if the ledger rows of this very run are visible from the migration's
    # own transaction, i.e. already committed on another connection; 0008 then fails, and
    # its rollback must not take those rows with it.
    write_revision(
        project.versions,
        "0007",
        "0006",
        """
        op.execute(
            "DO $$ BEGIN IF NOT EXISTS ("
            " SELECT 1 FROM releasegate.releases r"
            " JOIN releasegate.events e ON e.release_id = r.id"
            " WHERE r.outcome = 'running' AND e.step = 'upgrade 0006' AND e.status = 'ok')"
            " THEN RAISE EXCEPTION 'ledger rows of this run are not committed'; END IF; END $$"
        )
        """,
    )
    write_revision(project.versions, "0008", "0007", FAILING_UPGRADE)

    with pytest.raises(MigrationFailed, match="revision 0008 failed"):
        up(project.settings())

    assert db_versions(project.url) == ["0007"]
    release = last_release(project.url, project.service)
    steps = [(e.step, e.status) for e in release.events]
    assert steps == [
        ("lock", "ok"),
        *((f"upgrade {rev}", "ok") for rev in [*ALL_REVISIONS, "0007"]),
        ("upgrade 0008", "failed"),
    ]
    assert release.outcome == Outcome.FAILED


# -- timeouts ---------------------------------------------------------------------------


ADD_DOCUMENTS_COLUMN = 'op.add_column("documents", sa.Column("extra", sa.Text, nullable=True))'


def _lock_documents(url: str) -> psycopg.Connection[Any]:
    """Another session holding ACCESS EXCLUSIVE on documents until it commits."""
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE documents IN ACCESS EXCLUSIVE MODE")
    return blocker


def test_a_lock_timeout_is_retried_until_the_lock_is_free(project: Any) -> None:
    up(project.settings())
    write_revision(project.versions, "0007", "0006", ADD_DOCUMENTS_COLUMN)
    settings = project.settings(
        **QUICK_LOCK_TIMEOUT,
        RELEASEGATE_MIGRATIONS__LOCK_RETRIES="5",
        RELEASEGATE_MIGRATIONS__RETRY_BACKOFF="200ms",
    )
    blocker = _lock_documents(project.url)
    releaser = threading.Timer(1.0, blocker.commit)
    try:
        started = time.monotonic()
        releaser.start()
        result = up(settings)
        took = time.monotonic() - started
    finally:
        releaser.cancel()
        releaser.join()
        blocker.close()

    assert took >= 1.0
    assert db_versions(project.url) == ["0007"]
    assert "extra" in columns(project.url, "documents")
    (step,) = result.steps
    assert step.revision == "0007"
    assert step.status is StepStatus.OK
    assert 1 < step.attempts <= 6

    release = last_release(project.url, project.service)
    assert release.outcome == Outcome.SUCCEEDED
    retries = [e for e in release.events if e.status == StepStatus.INFO]
    assert len(retries) == step.attempts - 1
    assert all("retry" in e.detail and e.step == "upgrade 0007" for e in retries)
    assert [e.detail["retry"] for e in retries] == list(range(1, step.attempts))
    # Exponential backoff: 200ms, 400ms, 800ms...
    assert [e.detail["after_s"] for e in retries] == [0.2 * 2**i for i in range(len(retries))]
    assert "LockNotAvailable" in retries[0].detail["error"]
    assert step_events(release, StepStatus.OK)["upgrade 0007"]["attempts"] == step.attempts


def test_a_lock_timeout_that_outlasts_the_retries_fails_the_revision(project: Any) -> None:
    up(project.settings())
    write_revision(project.versions, "0007", "0006", ADD_DOCUMENTS_COLUMN)
    settings = project.settings(
        **QUICK_LOCK_TIMEOUT,
        RELEASEGATE_MIGRATIONS__LOCK_RETRIES="1",
        RELEASEGATE_MIGRATIONS__RETRY_BACKOFF="100ms",
    )
    blocker = _lock_documents(project.url)
    try:
        with pytest.raises(MigrationFailed, match=r"lock_timeout \(200ms\) hit 2 times") as info:
            up(settings)
    finally:
        blocker.close()

    assert "stays at 0006" in str(info.value)
    assert db_versions(project.url) == ["0006"]
    assert "extra" not in columns(project.url, "documents")
    release = last_release(project.url, project.service)
    assert release.outcome == Outcome.FAILED
    assert release.alembic_after == "0006"
    assert len([e for e in release.events if e.status == StepStatus.INFO]) == 1
    failed = step_events(release, StepStatus.FAILED)["upgrade 0007"]
    assert failed["attempts"] == 2
    assert "lock_timeout" in failed["error"]


def test_a_statement_timeout_fails_at_once_without_retry(project: Any) -> None:
    up(project.settings())
    write_revision(project.versions, "0007", "0006", 'op.execute("SELECT pg_sleep(3)")')
    settings = project.settings(
        RELEASEGATE_MIGRATIONS__STATEMENT_TIMEOUT="500ms",
        RELEASEGATE_MIGRATIONS__LOCK_RETRIES="3",
    )
    seen: list[StepResult] = []

    started = time.monotonic()
    with pytest.raises(MigrationFailed, match="QueryCanceled") as info:
        up(settings, on_step=seen.append)
    took = time.monotonic() - started

    assert "statement timeout" in str(info.value)
    assert took < 2.5
    assert db_versions(project.url) == ["0006"]
    assert [(s.revision, s.attempts) for s in seen] == [("0007", 1)]
    release = last_release(project.url, project.service)
    assert [e for e in release.events if e.status == StepStatus.INFO] == []
    assert step_events(release, StepStatus.FAILED)["upgrade 0007"]["attempts"] == 1


# -- the release lock -------------------------------------------------------------------


def test_up_waits_for_the_release_lock_then_gives_up(project: Any) -> None:
    settings = project.settings(RELEASEGATE_LOCK__WAIT="1s")

    with release_lock(project.url, project.service, "test", wait=5):
        started = time.monotonic()
        with pytest.raises(LockNotObtained, match="releasegate/lock test") as info:
            up(settings)
        waited = time.monotonic() - started

    assert 1.0 <= waited < 4.0
    assert f"service '{project.service}'" in str(info.value)
    assert exit_code_for(info.value) == ExitCode.INFRA == 3
    assert db_versions(project.url) is None
    assert release_count(project.url) == 0

    result = up(settings)
    assert result.after == ("0006",)
    assert db_versions(project.url) == ["0006"]


def test_the_lock_is_per_service(project: Any) -> None:
    with release_lock(project.url, f"{project.service}-other", "test", wait=5):
        result = up(project.settings(RELEASEGATE_LOCK__WAIT="200ms"))
    assert result.after == ("0006",)


def test_two_concurrent_ups_one_wins_the_other_gets_lock_not_obtained(project: Any) -> None:
    write_revision(project.versions, "0007", "0006", 'op.execute("SELECT pg_sleep(2)")')
    settings = project.settings(RELEASEGATE_LOCK__WAIT="500ms")
    start = threading.Barrier(2)
    outcomes: list[MigrateResult | BaseException] = []
    guard = threading.Lock()

    def run() -> None:
        start.wait()
        try:
            outcome: MigrateResult | BaseException = up(settings)
        except BaseException as exc:
            outcome = exc
        with guard:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    won = [o for o in outcomes if isinstance(o, MigrateResult)]
    lost = [o for o in outcomes if not isinstance(o, MigrateResult)]
    assert len(won) == 1, outcomes
    assert len(lost) == 1, outcomes
    assert isinstance(lost[0], LockNotObtained), "".join(traceback.format_exception(lost[0]))
    assert exit_code_for(lost[0]) == 3
    assert "releasegate/lock migrate up" in str(lost[0])
    assert won[0].after == ("0007",)
    assert db_versions(project.url) == ["0007"]
    assert [r.outcome for r in releases(project.url, project.service)] == [Outcome.SUCCEEDED]


# -- states releasegate refuses -----------------------------------------------------------


def test_a_database_ahead_of_the_code_is_refused(project: Any) -> None:
    settings = project.settings()
    up(settings)
    with psycopg.connect(project.url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff'")
    recorded = release_count(project.url)

    found = status(settings)
    assert found.state is DbState.UNKNOWN_REVISION
    assert found.current == ("ffff",)
    assert not found.ok
    assert any("ffff" in p and "ahead of the code" in p for p in found.problems)

    with pytest.raises(StateError, match="ahead of the code"):
        up(settings)
    with pytest.raises(StateError, match="ffff"):
        down(settings, to="0005")
    assert db_versions(project.url) == ["ffff"]
    assert release_count(project.url) == recorded


def test_multiple_heads_are_reported_and_refused(project: Any) -> None:
    write_revision(project.versions, "0099", "0005", 'op.execute("SELECT 1")', doc="Branch.")
    settings = project.settings()

    found = status(settings)
    assert sorted(found.heads) == ["0006", "0099"]
    assert any("2 heads" in p and "merge" in p for p in found.problems)

    with pytest.raises(MigrationScriptError, match="heads"):
        up(settings)
    with pytest.raises(MigrationScriptError, match="heads"):
        up(settings, to="head")
    assert db_versions(project.url) is None

    result = up(settings, to="0006")
    assert [s.revision for s in result.steps] == ALL_REVISIONS
    assert db_versions(project.url) == ["0006"]
    # Still two heads in the code: status keeps saying so.
    assert status(settings).problems == found.problems
