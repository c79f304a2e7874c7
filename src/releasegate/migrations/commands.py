"""The migration operations behind ``releasegate migrate``: status, up and down.

Each is an importable function taking the resolved :class:`~releasegate.config.Settings`;
the CLI only parses arguments and prints what these return. ``plan``, ``test`` and
``verify`` live in :mod:`~releasegate.migrations.plan`,
:mod:`~releasegate.migrations.harness` and :mod:`~releasegate.migrations.verify`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from releasegate import db
from releasegate.config import Settings, format_duration
from releasegate.errors import (
    ConfigError,
    Interrupted,
    LockNotObtained,
    MigrationFailed,
    MigrationScriptError,
    StateError,
)
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.lock import HeldLock, service_lock
from releasegate.migrations.project import (
    AlembicProject,
    Revision,
    current_revisions,
    sqlalchemy_connection,
)
from releasegate.runinfo import git_sha, performer


class DbState(StrEnum):
    NEVER_MIGRATED = "never_migrated"
    UP_TO_DATE = "up_to_date"
    PENDING = "pending"
    UNKNOWN_REVISION = "unknown_revision"
    MULTIPLE_HEADS = "multiple_heads"


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database stands against the migrations folder."""

    target: str
    current: tuple[str, ...] | None
    heads: tuple[str, ...]
    pending: list[Revision]
    state: DbState
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "current": list(self.current) if self.current is not None else None,
            "heads": list(self.heads),
            "state": str(self.state),
            "pending": [{"revision": r.id, "doc": r.doc} for r in self.pending],
            "problems": self.problems,
        }


def format_revisions(revs: tuple[str, ...] | None) -> str:
    if revs is None:
        return "never migrated"
    return ", ".join(revs) if revs else "base"


def multiple_heads_problem(heads: tuple[str, ...]) -> str:
    return (
        f"the migrations have {len(heads)} heads ({', '.join(heads)}): merge them"
        " (alembic merge heads) before migrating"
    )


def unknown_revision_problem(unknown: list[str]) -> str:
    return (
        f"the database is at revision {', '.join(unknown)}, which these migrations do not"
        " know: the database is ahead of the code (was the application rolled back?)."
        " Deploy the code that has it, or migrate down with that code first"
    )


def _status_from(
    project: AlembicProject, target: str, current: tuple[str, ...] | None
) -> MigrationStatus:
    heads = project.heads()
    problems = []
    if len(heads) > 1:
        problems.append(multiple_heads_problem(heads))
    unknown = [r for r in current or () if not project.knows(r)]
    if unknown:
        problems.append(unknown_revision_problem(unknown))
        return MigrationStatus(target, current, heads, [], DbState.UNKNOWN_REVISION, problems)
    if len(heads) > 1:
        # Never "up to date" while a head may be unapplied.
        pending = project.unapplied(current or ())
        return MigrationStatus(target, current, heads, pending, DbState.MULTIPLE_HEADS, problems)
    pending = project.upgrade_path(current or (), "heads") or []
    if current is None:
        state = DbState.NEVER_MIGRATED
    else:
        state = DbState.PENDING if pending else DbState.UP_TO_DATE
    return MigrationStatus(target, current, heads, pending, state, problems)


def require_single_head(result: MigrationStatus) -> None:
    """Raise the multiple-heads error (exit 2) of ``up``, ``plan`` and ``test`` for a status."""
    if result.state is DbState.MULTIPLE_HEADS:
        raise MigrationScriptError(multiple_heads_problem(result.heads))


def status(settings: Settings) -> MigrationStatus:
    """Current revision(s), head(s), pending revisions and any plain-spoken problems."""
    project = AlembicProject(settings)
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    with sqlalchemy_connection(
        url, "migrate status", connect_timeout=settings.raw.postgres.connect_timeout
    ) as conn:
        current = current_revisions(conn)
    return _status_from(project, db.describe_target(url), current)


# -- applying revisions -------------------------------------------------------------


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class StepResult:
    """One revision applied (or not), as recorded in the ledger."""

    revision: str
    direction: Direction
    status: StepStatus
    duration_s: float
    attempts: int = 1
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "direction": str(self.direction), "status": str(self.status)}


@dataclass
class MigrateResult:
    """What ``up`` or ``down`` did, and the ledger release that records it."""

    release_id: int
    direction: Direction
    before: tuple[str, ...] | None
    after: tuple[str, ...] | None = None
    steps: list[StepResult] = field(default_factory=list)
    lock_wait_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "direction": str(self.direction),
            "before": format_revisions(self.before),
            "after": format_revisions(self.after),
            "lock_wait_s": round(self.lock_wait_s, 3),
            "steps": [s.to_dict() for s in self.steps],
        }


StepCallback = Callable[[StepResult], None]


def _is_lock_timeout(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.LockNotAvailable)


def error_text(exc: BaseException) -> str:
    """``Type: first line`` of an error, the driver's own error for a SQLAlchemy wrapper."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: the migration code called sys.exit({exc.code!r})"
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return f"{type(exc).__name__}: {db.first_line(exc)}"


class _Migrator:
    """Runs a path of revisions one at a time, retrying lock timeouts, recording each."""

    def __init__(
        self,
        settings: Settings,
        project: AlembicProject,
        conn: Connection,
        ledger: Ledger,
        result: MigrateResult,
        on_step: StepCallback | None,
    ) -> None:
        self.settings = settings
        self.project = project
        self.conn = conn
        self.ledger = ledger
        self.result = result
        self.on_step = on_step
        self.in_flight: Revision | None = None  # the revision being applied, if any

    def run(self, path: list[Revision], lock: HeldLock) -> None:
        for rev in path:
            try:
                lock.ensure_held()
            except LockNotObtained as exc:
                now = current_revisions(self.conn)
                self.result.after = now
                self.ledger.record_event(
                    self.result.release_id, "lock", StepStatus.FAILED, None, {"error": str(exc)}
                )
                self.ledger.finish_release(
                    self.result.release_id,
                    Outcome.FAILED,
                    {"error": str(exc)},
                    alembic_after=format_revisions(now),
                )
                raise
            self._one(rev)

    def _apply(self, rev: Revision) -> None:
        if self.result.direction is Direction.UP:
            self.project.upgrade_one(self.conn, rev)
        else:
            self.project.downgrade_one(self.conn, rev)

    def _step(self, rev: Revision) -> str:
        return f"{'upgrade' if self.result.direction is Direction.UP else 'downgrade'} {rev.id}"

    def _one(self, rev: Revision) -> None:
        opts = self.settings.raw.migrations
        direction = self.result.direction
        step = self._step(rev)
        started = time.monotonic()
        attempt = 0
        self.in_flight = rev
        while True:
            attempt += 1
            try:
                self._apply(rev)
                break
            except (Exception, SystemExit) as exc:
                # SystemExit: env.py or a revision called sys.exit(); a failure like any other.
                self.conn.rollback()
                if _is_lock_timeout(exc) and attempt <= opts.lock_retries:
                    delay = opts.retry_backoff * 2 ** (attempt - 1)
                    self.ledger.record_event(
                        self.result.release_id,
                        step,
                        StepStatus.INFO,
                        None,
                        {"retry": attempt, "after_s": delay, "error": error_text(exc)},
                    )
                    time.sleep(delay)
                    continue
                self._fail(rev, step, exc, attempt, time.monotonic() - started)
        outcome = StepResult(rev.id, direction, StepStatus.OK, time.monotonic() - started, attempt)
        self._record(step, outcome, rev)
        self.in_flight = None

    def _record(
        self, step: str, outcome: StepResult, rev: Revision, *, note: str | None = None
    ) -> None:
        if not any(s.revision == rev.id and s.status == outcome.status for s in self.result.steps):
            self.result.steps.append(outcome)
        self.ledger.record_event(
            self.result.release_id,
            step,
            outcome.status,
            outcome.duration_s,
            {"revision": rev.id, "doc": rev.doc, "attempts": outcome.attempts}
            | ({"error": outcome.error} if outcome.error else {})
            | ({"note": note} if note else {}),
        )
        if self.on_step and note is None:
            self.on_step(outcome)

    def _applied_below(self, heads: tuple[str, ...] | None) -> set[str]:
        """Every revision at or below ``heads``: what the database holds applied."""
        return {rev.id for head in heads or () for rev in self.project.upgrade_path((), head) or []}

    def _landed(self, rev: Revision, now: tuple[str, ...] | None) -> bool:
        """Whether the step of ``rev`` committed, judged from the revisions ``now``."""
        return (rev.id in self._applied_below(now)) == (self.result.direction is Direction.UP)

    def _revisions_now(self) -> tuple[bool, tuple[str, ...] | None]:
        """(known, revisions): re-read after an interruption, on a new session if need be."""
        try:
            self.conn.rollback()
            return True, current_revisions(self.conn)
        except Exception:  # the session was cut with the statement it ran
            pass
        try:
            with sqlalchemy_connection(
                self.settings.postgres_url(),
                "migrate check",
                connect_timeout=self.settings.raw.postgres.connect_timeout,
            ) as conn:
                return True, current_revisions(conn)
        except Exception:
            return False, None

    def cut_short(self, path: list[Revision], exc: BaseException) -> BaseException | None:
        """Close the ledger row of a run stopped by ``exc`` (a signal, sys.exit in a hook,
        anything unforeseen) with what actually committed; the error to raise in its place.

        Revisions that committed but have no ``ok`` event yet (the signal came between the
        commit and the record) get one; the revision that was running gets a ``failed``
        one. An interrupt closes the row ``aborted`` and becomes :class:`Interrupted`
        (exit 130); ``None`` means: raise ``exc`` itself.
        """
        release_id = self.result.release_id
        interrupted = isinstance(exc, KeyboardInterrupt)
        how = f"interrupted by {str(exc) or 'Ctrl-C'}" if interrupted else error_text(exc)
        known, now = self._revisions_now()
        if known:
            self.result.after = now
            recorded = {
                e.detail.get("revision")
                for e in self.ledger.events(release_id)
                if e.status == StepStatus.OK
            }
            for rev in path:
                if self._landed(rev, now) and rev.id not in recorded:
                    outcome = StepResult(rev.id, self.result.direction, StepStatus.OK, 0.0)
                    self._record(
                        self._step(rev), outcome, rev, note=f"committed; recorded after: {how}"
                    )
                elif rev is self.in_flight and not self._landed(rev, now):
                    outcome = StepResult(
                        rev.id, self.result.direction, StepStatus.FAILED, 0.0, error=how
                    )
                    self._record(self._step(rev), outcome, rev, note="rolled back")
        outcome_now = Outcome.ABORTED if interrupted else Outcome.FAILED
        where = format_revisions(now) if known else "a revision that could not be read"
        self.ledger.finish_release(
            release_id,
            outcome_now,
            {
                "error": how,
                "revisions": [s.revision for s in self.result.steps if s.status is StepStatus.OK],
            },
            alembic_after=format_revisions(now) if known else None,
        )
        message = (
            f"{how} during migrate {self.result.direction}: the database is at {where}"
            f" (ledger release {release_id}, {outcome_now})"
        )
        if interrupted:
            return Interrupted(message)
        if isinstance(exc, SystemExit):
            return MigrationFailed(message)
        return None

    def _fail(
        self, rev: Revision, step: str, exc: BaseException, attempts: int, took: float
    ) -> None:
        error = error_text(exc)
        if _is_lock_timeout(exc):
            lock_timeout = format_duration(self.settings.raw.migrations.lock_timeout)
            error = f"lock_timeout ({lock_timeout}) hit {attempts} times: {error}"
        elif isinstance(exc, NotImplementedError) and self.result.direction is Direction.DOWN:
            error = f"irreversible: {db.first_line(exc)}"
        now = current_revisions(self.conn)
        self.result.after = now
        direction = self.result.direction
        if self._landed(rev, now):
            # It committed before its code failed (e.g. env.py raising after the migration).
            self._record(step, StepResult(rev.id, direction, StepStatus.OK, took, attempts), rev)
            what = f"revision {rev.id} committed, then its code failed: {error}; the database is"
        else:
            outcome = StepResult(rev.id, direction, StepStatus.FAILED, took, attempts, error)
            self._record(step, outcome, rev)
            what = f"revision {rev.id} failed: {error}; the database stays"
        self.ledger.finish_release(
            self.result.release_id,
            Outcome.FAILED,
            {"failed_revision": rev.id, "error": error},
            alembic_after=format_revisions(now),
        )
        raise MigrationFailed(
            f"{what} at {format_revisions(now)} (ledger release {self.result.release_id})"
        ) from None


def _migrate(
    settings: Settings,
    direction: Direction,
    choose_path: Callable[[AlembicProject, tuple[str, ...]], list[Revision]],
    project: AlembicProject,
    on_step: StepCallback | None,
) -> MigrateResult:
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    opts = settings.raw.migrations
    purpose = f"migrate {direction}"
    with (
        service_lock(settings, purpose) as held,
        Ledger.open(url) as ledger,
        sqlalchemy_connection(
            url,
            purpose,
            lock_timeout=opts.lock_timeout,
            statement_timeout=opts.statement_timeout,
            connect_timeout=settings.raw.postgres.connect_timeout,
        ) as conn,
    ):
        current = current_revisions(conn)
        unknown = [r for r in current or () if not project.knows(r)]
        if unknown:
            raise StateError(unknown_revision_problem(unknown))
        path = choose_path(project, current or ())
        if path:
            project.require_shared_connection(conn)
        release_id = ledger.start_release(
            settings.service,
            "migrate",
            performer(),
            git_sha=git_sha(settings.root),
            alembic_before=format_revisions(current),
        )
        result = MigrateResult(release_id, direction, current, lock_wait_s=held.waited)
        ledger.record_event(
            release_id, "lock", StepStatus.OK, held.waited, {"service": settings.service}
        )
        migrator = _Migrator(settings, project, conn, ledger, result, on_step)
        try:
            migrator.run(path, held)
        except (MigrationFailed, LockNotObtained):
            raise  # already recorded with the revision that failed
        except BaseException as exc:
            # Anything else (Ctrl-C, SIGTERM, a failing callback): close the row honestly.
            replacement = migrator.cut_short(path, exc)
            if replacement is None:
                raise
            raise replacement from None
        result.after = current_revisions(conn)
        ledger.finish_release(
            release_id,
            Outcome.SUCCEEDED,
            {"direction": str(direction), "revisions": [s.revision for s in result.steps]},
            alembic_after=format_revisions(result.after),
        )
        return result


def up(
    settings: Settings, to: str | None = None, *, on_step: StepCallback | None = None
) -> MigrateResult:
    """Apply pending revisions up to ``to`` (default: the head), one transaction each.

    Holds the release lock; sets ``lock_timeout`` and ``statement_timeout``; retries a
    revision that hit the lock timeout with exponential backoff; records every revision in
    the ledger. A failing revision is rolled back by its transaction and raises
    :class:`MigrationFailed`, leaving the database at the last good revision.
    """
    project = AlembicProject(settings)
    heads = project.heads()
    # Alembic cannot resolve 'head' among several heads (it raises MultipleHeads).
    if to in (None, "head", "heads") and len(heads) > 1:
        raise MigrationScriptError(multiple_heads_problem(heads))
    target = project.resolve(to or "head")

    def path(proj: AlembicProject, current: tuple[str, ...]) -> list[Revision]:
        if target in current:
            return []
        steps = proj.upgrade_path(current, target)
        if steps is None:
            raise ConfigError(
                f"revision {target} is not above the current revision"
                f" {format_revisions(current)}: use 'migrate down'"
            )
        return steps

    return _migrate(settings, Direction.UP, path, project, on_step)


def down(settings: Settings, to: str, *, on_step: StepCallback | None = None) -> MigrateResult:
    """Undo revisions, newest first, down to ``to``: a revision id, ``base``, or ``-N``.

    ``-N`` undoes the newest N applied revisions, as ``alembic downgrade -N``. Same lock,
    timeouts and ledger records as :func:`up`. An irreversible revision stops the
    downgrade there with :class:`MigrationFailed`.
    """
    project = AlembicProject(settings)
    relative = to.startswith("-")
    target = to if relative else project.resolve(to)
    if target in ("head", "heads"):
        raise ConfigError("migrate down needs a revision below the current one, or 'base'")

    def path(proj: AlembicProject, current: tuple[str, ...]) -> list[Revision]:
        goal = proj.relative_downgrade_target(current, to) if relative else target
        if goal is None:
            raise ConfigError(f"invalid target {to!r}: a relative target looks like -1 or -2")
        steps = proj.downgrade_path(current, goal)
        if steps is None:
            raise ConfigError(
                f"revision {goal} is not below the current revision"
                f" {format_revisions(current)}: use 'migrate up'"
            )
        return steps

    return _migrate(settings, Direction.DOWN, path, project, on_step)
