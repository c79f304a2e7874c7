"""The release ledger on a real database: schema, round trips, append-only log, redaction."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest

from releasegate import secrets
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.ledger.schema import LATEST_VERSION, LEDGER_SCHEMA, MIGRATIONS
from releasegate.lock import release_lock, shared

if TYPE_CHECKING:
    from conftest import Project  # the `project` fixture's type


@pytest.fixture(autouse=True)
def isolated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets registered by a test stay in that test."""
    monkeypatch.setattr(secrets, "_registered", set())


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    with Ledger.open(pg_url, "ledger test") as opened:
        yield opened


def test_ensure_schema_creates_schema_and_is_idempotent(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        fresh = Ledger(conn)
        assert fresh.schema_version() == 0
        assert fresh.ensure_schema() == LATEST_VERSION
        assert fresh.schema_version() == LATEST_VERSION
        assert fresh.ensure_schema() == 0
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (LEDGER_SCHEMA,),
            )
        }
        versions = conn.execute(
            f"SELECT version FROM {LEDGER_SCHEMA}.schema_version ORDER BY version"
        ).fetchall()
    assert tables == {"releases", "events", "schema_version"}
    assert versions == [(v,) for v in range(1, LATEST_VERSION + 1)]


def test_open_creates_the_schema(pg_url: str) -> None:
    with Ledger.open(pg_url) as ledger:
        assert ledger.schema_version() == LATEST_VERSION
        assert ledger.releases() == []
    with Ledger.open(pg_url) as again:
        assert again.ensure_schema() == 0


def test_concurrent_first_use_creates_the_schema_once(pg_url: str) -> None:
    runners = 4
    barrier = threading.Barrier(runners)
    applied: list[int] = []
    errors: list[BaseException] = []

    def first_use() -> None:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                barrier.wait(timeout=10)
                applied.append(Ledger(conn).ensure_schema())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(applied) == [0] * (runners - 1) + [LATEST_VERSION]


def test_release_round_trip(ledger: Ledger, pg_url: str) -> None:
    with release_lock(pg_url, "notes", "ledger test", wait=5):
        release_id = ledger.start_release(
            "notes", "migrate", "ci-runner", git_sha="abc123", alembic_before="0001"
        )
        running = ledger.release(release_id)
    assert running is not None
    assert running.outcome == "running"
    assert running.finished_at is None
    assert running.events == []

    ledger.record_event(release_id, "lock", StepStatus.OK, 0.0123, {"service": "notes"})
    ledger.record_event(release_id, "upgrade 0002", "failed", None, {"error": "boom"})
    ledger.update_release(release_id, image_digest="sha256:beef")
    ledger.finish_release(
        release_id, Outcome.FAILED, {"failed_revision": "0002"}, alembic_after="0001"
    )

    release = ledger.release(release_id)
    assert release is not None
    assert (release.service, release.kind, release.performer) == ("notes", "migrate", "ci-runner")
    assert release.git_sha == "abc123"
    assert release.image_digest == "sha256:beef"
    assert (release.alembic_before, release.alembic_after) == ("0001", "0001")
    assert release.outcome == "failed"
    assert release.finished_at is not None
    assert release.finished_at >= release.started_at
    assert release.summary == {"failed_revision": "0002"}
    assert [(e.step, e.status) for e in release.events] == [
        ("lock", "ok"),
        ("upgrade 0002", "failed"),
    ]
    assert release.events[0].duration_ms == pytest.approx(12.3)
    assert release.events[0].detail == {"service": "notes"}
    assert release.events[1].duration_ms is None
    assert release.events == ledger.events(release_id)
    assert release.events[0].at <= release.events[1].at

    as_dict = json.loads(json.dumps(release.to_dict()))
    assert as_dict["outcome"] == "failed"
    assert [e["step"] for e in as_dict["events"]] == ["lock", "upgrade 0002"]


def test_releases_newest_first_filtered_and_limited(ledger: Ledger) -> None:
    first = ledger.start_release("notes", "migrate", "a")
    other = ledger.start_release("billing", "migrate", "b")
    last = ledger.start_release("notes", "release", "c")
    ledger.record_event(last, "deploy", StepStatus.INFO)

    assert [r.id for r in ledger.releases()] == [last, other, first]
    assert [r.id for r in ledger.releases("notes")] == [last, first]
    assert [r.id for r in ledger.releases("notes", limit=1)] == [last]
    assert ledger.releases("nobody") == []
    assert ledger.releases("notes")[0].events == []
    with_events = ledger.releases("notes", with_events=True)
    assert [e.step for e in with_events[0].events] == ["deploy"]
    assert with_events[1].events == []


def test_unknown_release_and_columns(ledger: Ledger) -> None:
    assert ledger.release(424242) is None
    assert ledger.events(424242) == []
    with pytest.raises(TypeError, match="nope"):
        ledger.start_release("notes", "migrate", "a", nope="x")
    release_id = ledger.start_release("notes", "migrate", "a")
    with pytest.raises(TypeError, match="nope"):
        ledger.update_release(release_id, nope="x")


def test_events_are_append_only(ledger: Ledger) -> None:
    release_id = ledger.start_release("notes", "migrate", "a")
    ledger.record_event(release_id, "upgrade 0001", StepStatus.FAILED, 1.0, {"error": "x"})
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        ledger.conn.execute(f"UPDATE {LEDGER_SCHEMA}.events SET status = 'ok'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        ledger.conn.execute(f"DELETE FROM {LEDGER_SCHEMA}.events")
    events = ledger.events(release_id)
    assert [(e.step, e.status, e.detail) for e in events] == [
        ("upgrade 0001", "failed", {"error": "x"})
    ]


def test_secrets_in_event_detail_are_redacted(ledger: Ledger) -> None:
    token = "tok-9f8e7d6c"
    odd = 'pä"ss\\wörd'  # escaped in JSON text: \u00e4, \" and \\
    secrets.register_secret(token)
    secrets.register_secret(odd)
    release_id = ledger.start_release("notes", "migrate", "a")
    ledger.record_event(
        release_id,
        "upgrade 0003",
        StepStatus.FAILED,
        0.5,
        {
            "error": f"auth failed with {token}",
            "nested": {"tokens": [token, f"x{odd}y"], "count": 2},
            "url": "postgresql://app:plainpw@db:5432/notes",
        },
    )
    [event] = ledger.events(release_id)
    assert event.detail == {
        "error": "auth failed with ***",
        "nested": {"tokens": ["***", "x***y"], "count": 2},
        "url": "postgresql://app:***@db:5432/notes",
    }
    stored = ledger.conn.execute(
        f"SELECT detail::text FROM {LEDGER_SCHEMA}.events WHERE release_id = %s", (release_id,)
    ).fetchone()
    assert stored is not None
    for secret in (token, "plainpw", "pä", "wörd"):
        assert secret not in stored[0]


def test_summary_is_merged_and_redacted_on_finish(ledger: Ledger) -> None:
    secrets.register_secret("sum-secret-42")
    release_id = ledger.start_release("notes", "migrate", "a")
    ledger.finish_release(release_id, Outcome.FAILED, {"a": 1, "b": {"x": 1}})
    ledger.finish_release(release_id, Outcome.ROLLED_BACK, {"b": {"y": 2}, "c": "sum-secret-42"})
    release = ledger.release(release_id)
    assert release is not None
    assert release.outcome == "rolled_back"
    # jsonb || merges the top level only: "b" is replaced, not deep-merged.
    assert release.summary == {"a": 1, "b": {"y": 2}, "c": "***"}


def test_finish_without_summary_keeps_the_stored_one(ledger: Ledger) -> None:
    release_id = ledger.start_release("notes", "migrate", "a")
    ledger.finish_release(release_id, Outcome.RUNNING, {"direction": "up"})
    ledger.finish_release(release_id, Outcome.SUCCEEDED)
    release = ledger.release(release_id)
    assert release is not None
    assert release.outcome == "succeeded"
    assert release.summary == {"direction": "up"}


# -- rows whose runner is gone ----------------------------------------------------------


def test_a_running_row_is_running_while_its_runner_holds_the_lock(
    ledger: Ledger, pg_url: str
) -> None:
    with release_lock(pg_url, "notes", "ledger test", wait=5):
        release_id = ledger.start_release("notes", "migrate", "runner-a")
        assert [r.outcome for r in ledger.releases("notes")] == ["running"]
        shown = ledger.release(release_id)
        assert shown is not None and shown.outcome == "running"
    # The runner is gone (its lock session closed) without closing the row.
    [release] = ledger.releases("notes")
    assert release.outcome == Outcome.INTERRUPTED == "interrupted"
    shown = ledger.release(release_id)
    assert shown is not None and shown.outcome == "interrupted"
    # The table keeps "running": 'release --resume' finds the row by it.
    row = ledger.conn.execute(
        f"SELECT outcome FROM {LEDGER_SCHEMA}.releases WHERE id = %s", (release_id,)
    ).fetchone()
    assert row == ("running",)


def test_a_running_row_older_than_the_lock_holder_is_interrupted(
    ledger: Ledger, pg_url: str
) -> None:
    stale = ledger.start_release("notes", "migrate", "killed-runner")
    with release_lock(pg_url, "notes", "ledger test", wait=5):
        current = ledger.start_release("notes", "migrate", "runner-b")
        outcomes = {r.id: r.outcome for r in ledger.releases("notes")}
        # Another service's lock says nothing about this one.
        other = ledger.start_release("notes-other", "migrate", "runner-c")
        other_shown = ledger.release(other)
    assert outcomes == {stale: "interrupted", current: "running"}
    assert other_shown is not None and other_shown.outcome == "interrupted"


def test_closed_rows_are_shown_as_stored(ledger: Ledger) -> None:
    release_id = ledger.start_release("notes", "migrate", "runner")
    ledger.finish_release(release_id, Outcome.ABORTED, {"error": "interrupted by SIGTERM"})
    [release] = ledger.releases("notes")
    assert release.outcome == "aborted"


# -- a release's own runs are its children ----------------------------------------------


def test_rows_opened_under_a_release_are_its_children(ledger: Ledger, pg_url: str) -> None:
    with release_lock(pg_url, "notes", "ledger test", wait=5) as held, shared(held):
        release_id = ledger.start_release("notes", "release", "ci", image_ref="notes:v2")
        # Its steps open rows on connections of their own, as backups and migrations do.
        with Ledger.open(pg_url) as step_ledger:
            backup = step_ledger.start_release("notes", "backup", "ci")
            step_ledger.finish_release(backup, Outcome.SUCCEEDED)
            migrate = step_ledger.start_release("notes", "migrate", "ci", alembic_before="0001")
            step_ledger.finish_release(migrate, Outcome.FAILED, alembic_after="0003")
            restore = step_ledger.start_release(
                "notes", "restore", "ci", alembic_before="0003", alembic_after="0001"
            )
            step_ledger.finish_release(restore, Outcome.SUCCEEDED)
        ledger.finish_release(release_id, Outcome.ROLLED_BACK)
    standalone = ledger.start_release("notes", "migrate", "ci", alembic_before="0001")

    assert [r.id for r in ledger.releases("notes")] == [standalone, release_id]
    assert [r.id for r in ledger.releases("notes", nested=True)] == [
        standalone,
        restore,
        migrate,
        backup,
        release_id,
    ]
    children = ledger.children(release_id)
    assert [(c.id, c.kind, c.parent_id) for c in children] == [
        (backup, "backup", release_id),
        (migrate, "migrate", release_id),
        (restore, "restore", release_id),
    ]
    release = ledger.release(release_id)
    assert release is not None and release.parent_id is None
    # One row tells the whole release: versions before the first step, after the last.
    assert (release.alembic_before, release.alembic_after) == ("0001", "0001")
    assert release.image_ref == "notes:v2" and release.outcome == "rolled_back"
    assert release.duration_s is not None and release.duration_s >= 0
    assert release.to_dict()["duration_s"] == release.duration_s


def test_steps_under_a_lock_without_a_release_row_stay_top_level(
    ledger: Ledger, pg_url: str
) -> None:
    # E.g. a resumed release that has not named its row: its steps are not each
    # other's children.
    with release_lock(pg_url, "notes", "ledger test", wait=5) as held, shared(held):
        first = ledger.start_release("notes", "migrate", "ci")
        second = ledger.start_release("notes", "restore", "ci")
        assert held.ledger_row is None
    with release_lock(pg_url, "notes", "ledger test", wait=5) as own:
        # Not shared: a standalone run is never anybody's child.
        alone = ledger.start_release("notes", "release", "ci")
    assert [r.id for r in ledger.releases("notes")] == [alone, second, first]
    assert own.ledger_row is None


def test_a_real_migrate_up_inside_a_release_is_its_child(project: Project) -> None:
    from releasegate.migrations.commands import up

    settings = project.settings()
    with (
        release_lock(project.url, project.service, "release", wait=5) as held,
        shared(held),
        Ledger.open(project.url) as ledger,
    ):
        release_id = ledger.start_release(project.service, "release", "ci", image_ref="n:2")
        result = up(settings)
        ledger.finish_release(release_id, Outcome.SUCCEEDED)
    with Ledger.open(project.url) as ledger:
        [release] = ledger.releases(project.service)
        [child] = ledger.children(release_id)
    assert release.id == release_id
    assert child.id == result.release_id and child.kind == "migrate"
    assert release.alembic_before == child.alembic_before == "never migrated"
    assert release.alembic_after == child.alembic_after
    assert child.alembic_after is not None and child.alembic_after != "never migrated"


def test_a_version_1_ledger_is_upgraded_in_place(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {LEDGER_SCHEMA}")
        conn.execute(
            f"CREATE TABLE {LEDGER_SCHEMA}.schema_version ("
            " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(MIGRATIONS[0][1])
        conn.execute(f"INSERT INTO {LEDGER_SCHEMA}.schema_version (version) VALUES (1)")
        conn.execute(
            f"INSERT INTO {LEDGER_SCHEMA}.releases (service, kind, performer)"
            " VALUES ('notes', 'migrate', 'old')"
        )
        ledger = Ledger(conn)
        assert ledger.ensure_schema() == LATEST_VERSION - 1
        [old] = ledger.releases("notes")
    assert old.performer == "old" and old.parent_id is None


def test_first_deferral_is_the_first_succeeded_release_that_deferred_it(ledger: Ledger) -> None:
    assert ledger.first_deferral("notes", "0006") is None
    failed = ledger.start_release("notes", "release", "ci")
    ledger.merge_summary(failed, {"plan": {"deferred": ["0006"]}})
    ledger.finish_release(failed, Outcome.ROLLED_BACK)
    assert ledger.first_deferral("notes", "0006") is None  # never live
    first = ledger.start_release("notes", "release", "ci")
    ledger.merge_summary(first, {"plan": {"deferred": ["0006"]}})
    ledger.finish_release(first, Outcome.SUCCEEDED)
    later = ledger.start_release("notes", "release", "ci")
    ledger.merge_summary(later, {"plan": {"deferred": ["0006", "0007"]}})
    ledger.finish_release(later, Outcome.SUCCEEDED)
    since = ledger.first_deferral("notes", "0006")
    first_row = ledger.release(first)
    assert first_row is not None and since == first_row.finished_at
    assert ledger.first_deferral("notes", "0007") == ledger.release(later).finished_at  # type: ignore[union-attr]
    assert ledger.first_deferral("other", "0006") is None
