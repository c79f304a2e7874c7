"""``releasegate migrate test``: prove a migration chain on a throwaway database.

On a scratch database created (and dropped) on the configured server:

1. a *stairway* from base: for each revision, upgrade, downgrade, upgrade again;
   after each downgrade the schema must equal the one before the revision, and after
   the second upgrade the one after the first;
2. at head, the schema is compared with the service's SQLAlchemy metadata (drift);
3. everything is downgraded again, as far as declared-irreversible revisions allow;
   at base the schema must be empty (no trace left).

A ``migrations.baseline`` hook first prepares the empty scratch database, for chains
whose first revision expects tables made outside Alembic; "nothing left" then means
"what the baseline made".

Revisions whose ``downgrade()`` raises ``NotImplementedError``, or that
``migrations.irreversible`` names, are reported as irreversible; one whose downgrade runs
but leaves a trace is a failure, and so is a ``downgrade()`` that does nothing (``pass``).
With ``keep_going``, a failed step is stamped past so that every revision is tried.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from releasegate import db
from releasegate.config import Settings
from releasegate.errors import ConfigError, MigrationScriptError
from releasegate.migrations.commands import multiple_heads_problem
from releasegate.migrations.drift import drift
from releasegate.migrations.project import AlembicProject, Revision, sqlalchemy_connection
from releasegate.migrations.schema import SchemaSnapshot, diff, snapshot
from releasegate.migrations.sqltext import split_statements
from releasegate.output import table

__all__ = [
    "HarnessReport",
    "RevisionCheck",
    "drift",
    "load_baseline",
    "load_metadata",
    "render_text",
    "run_test",
]

NOOP_DOWN = "no-op (leaves trace)"


@dataclass
class RevisionCheck:
    """What the stairway found for one revision."""

    revision: str
    doc: str
    up: str = "not run"  # ok | failed
    down: str = "not run"  # ok | irreversible | failed | leaves trace | no-op (leaves trace)
    reup: str = "not run"  # ok | differs | failed
    up_ms: float = 0.0
    down_ms: float = 0.0
    irreversible_reason: str | None = None
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class HarnessReport:
    """The outcome of ``migrate test``; ``ok`` is what the exit status follows."""

    scratch_database: str
    revisions: list[RevisionCheck] = field(default_factory=list)
    drift: list[str] | None = None  # None: not checked (no metadata, or stopped early)
    lowest_reached: str | None = None  # None: the final downgrade did not run
    stopped_at: str | None = None  # the revision where the stairway had to stop
    stamped: list[str] = field(default_factory=list)  # failed steps keep_going stamped past
    final_differences: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def irreversible(self) -> list[str]:
        return [r.revision for r in self.revisions if r.down == "irreversible"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "scratch_database": self.scratch_database,
            "revisions": [r.to_dict() for r in self.revisions],
            "irreversible": self.irreversible,
            "drift": self.drift,
            "lowest_reached": self.lowest_reached,
            "stopped_at": self.stopped_at,
            "stamped": self.stamped,
            "final_differences": self.final_differences,
            "problems": self.problems,
            "duration_s": round(self.duration_s, 3),
        }


def load_metadata(reference: str) -> MetaData:
    """Import ``package.module:attribute`` (sys.path already holds the project's paths)."""
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"migrations.metadata {reference!r} cannot be imported: {exc}") from None
    if not isinstance(target, MetaData):
        raise ConfigError(f"migrations.metadata {reference!r} is not a SQLAlchemy MetaData")
    return target


Baseline = Callable[[Connection], None]


def load_baseline(settings: Settings) -> Baseline | None:
    """The ``migrations.baseline`` hook: a SQL file, or ``package.module:function``.

    The function is called with a SQLAlchemy connection to the empty scratch database;
    what it leaves open is committed. Loaded before any database is touched.
    """
    reference = settings.raw.migrations.baseline
    if reference is None:
        return None
    if re.fullmatch(r"[\w.]+:[\w.]+", reference):
        module_name, _, attribute = reference.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"migrations.baseline {reference!r} cannot be imported: {db.first_line(exc)}"
            ) from None
        if not callable(target):
            raise ConfigError(f"migrations.baseline {reference!r} is not a function")
        function: Baseline = target
        return function
    path = settings.resolve_path(Path(reference))
    try:
        script = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"migrations.baseline {reference!r} cannot be read: {exc}") from None
    statements = [statement.text for statement in split_statements(script)]

    def run_script(connection: Connection) -> None:
        for statement in statements:
            connection.exec_driver_sql(statement)

    return run_script


def _apply_baseline(baseline: Baseline, connection: Connection, reference: str) -> None:
    try:
        baseline(connection)
        if connection.in_transaction():
            connection.commit()
    except Exception as exc:
        connection.rollback()
        raise MigrationScriptError(
            f"migrations.baseline {reference!r} failed on the scratch database:"
            f" {type(exc).__name__}: {db.first_line(exc)}"
        ) from None


def _describe(differences: list[Any]) -> list[str]:
    return [d.describe() for d in differences]


class _Stairway:
    def __init__(
        self,
        project: AlembicProject,
        conn: Connection,
        snap: Callable[[], SchemaSnapshot],
        report: HarnessReport,
        progress: Callable[[str], None],
        keep_going: bool = False,
    ) -> None:
        self.project = project
        self.conn = conn
        self.snap = snap
        self.report = report
        self.progress = progress
        self.keep_going = keep_going
        self.base = snap()
        self.after: dict[str, SchemaSnapshot] = {}

    def _timed(self, action: Callable[[], None]) -> tuple[float, BaseException | None]:
        started = time.monotonic()
        try:
            action()
            error = None
        except Exception as exc:
            self.conn.rollback()
            error = exc
        return (time.monotonic() - started) * 1000, error

    def _carry_on(self, rev: Revision, check: RevisionCheck) -> bool:
        """After a failed step: stamp ``rev`` and go on (keep_going), or stop here."""
        if self.keep_going:
            _, error = self._timed(partial(self.project.stamp, self.conn, rev))
            if error is None:
                self.report.stamped.append(rev.id)
                check.details.append(f"stamped {rev.id} to go on")
                return True
            check.details.append(f"cannot stamp {rev.id}: {db.first_line(error)}")
        self.report.stopped_at = rev.id
        return False

    def run(self, path: list[Revision]) -> bool:
        """The stairway; False when a failed step stopped it (the chain cannot go on)."""
        before = self.base
        for rev in path:
            check = RevisionCheck(rev.id, rev.doc)
            self.report.revisions.append(check)
            check.up_ms, error = self._timed(partial(self.project.upgrade_one, self.conn, rev))
            if error:
                check.up = "failed"
                check.details.append(f"upgrade failed: {db.first_line(error)}")
                self.report.problems.append(f"{rev.id}: upgrade failed: {db.first_line(error)}")
                self.progress(f"{rev.id}: up failed")
                if not self._carry_on(rev, check):
                    return False
                self.after[rev.id] = before = self.snap()
                continue
            check.up = "ok"
            self.after[rev.id] = after = self.snap()
            self._down_and_up(rev, check, before, after)
            self.progress(f"{rev.id}: up {check.up}, down {check.down}, up again {check.reup}")
            if check.reup == "failed":
                # The database is no longer at rev.id: the next revision cannot follow.
                if not self._carry_on(rev, check):
                    return False
                self.after[rev.id] = after = self.snap()
            before = after
        return True

    def _down_and_up(
        self, rev: Revision, check: RevisionCheck, before: SchemaSnapshot, after: SchemaSnapshot
    ) -> None:
        if rev.noop_downgrade and not rev.irreversible:
            # Running it would only move alembic_version below work that stays.
            check.down = NOOP_DOWN
            check.details.append("downgrade() does nothing")
            self.report.problems.append(
                f"{rev.id}: downgrade() does nothing and leaves the upgrade's work: write a"
                " downgrade, or name the revision in migrations.irreversible"
            )
            return
        check.down_ms, error = self._timed(lambda: self.project.downgrade_one(self.conn, rev))
        if isinstance(error, NotImplementedError):
            check.down = "irreversible"
            check.irreversible_reason = db.first_line(error)
            return
        if error:
            check.down = "failed"
            check.details.append(f"downgrade failed: {db.first_line(error)}")
            self.report.problems.append(f"{rev.id}: downgrade failed: {db.first_line(error)}")
            return
        leftovers = diff(before, self.snap())
        check.down = "leaves trace" if leftovers else "ok"
        if leftovers:
            check.details += _describe(leftovers)
            self.report.problems.append(
                f"{rev.id}: downgrade does not restore the previous schema"
                f" ({len(leftovers)} difference(s))"
            )
        _, error = self._timed(lambda: self.project.upgrade_one(self.conn, rev))
        if error:
            check.reup = "failed"
            check.details.append(f"upgrade after downgrade failed: {db.first_line(error)}")
            self.report.problems.append(
                f"{rev.id}: upgrade after downgrade failed: {db.first_line(error)}"
            )
            return
        differences = diff(after, self.snap())
        check.reup = "differs" if differences else "ok"
        if differences:
            check.details += _describe(differences)
            self.report.problems.append(f"{rev.id}: second upgrade gives a different schema")

    def down_all(self, path: list[Revision]) -> None:
        """Downgrade to base, or to the lowest revision irreversible ones allow; compare."""
        lowest: Revision | None = None
        for rev in reversed(path):
            if rev.noop_downgrade and not rev.irreversible:
                lowest = rev  # already reported by the stairway
                break
            _, error = self._timed(partial(self.project.downgrade_one, self.conn, rev))
            if error:
                lowest = rev
                if not isinstance(error, NotImplementedError):
                    self.report.problems.append(
                        f"{rev.id}: downgrade failed: {db.first_line(error)}"
                    )
                break
        now = self.snap()
        if lowest is None:
            self.report.lowest_reached = "base"
            # At base, what the baseline made (if anything) is all there may be.
            self.report.final_differences = [d.key for d in diff(self.base, now)]
            if self.report.final_differences:
                self.report.problems.append(
                    "downgrade to base left a trace: " + ", ".join(self.report.final_differences)
                )
            return
        self.report.lowest_reached = lowest.id
        self.report.final_differences = _describe(diff(self.after[lowest.id], now))
        if self.report.final_differences:
            self.report.problems.append(
                f"downgrade to {lowest.id} does not give the schema {lowest.id} had"
            )


def run_test(
    settings: Settings,
    *,
    progress: Callable[[str], None] | None = None,
    keep_going: bool = False,
) -> HarnessReport:
    """Run the whole harness on a scratch database; see the module docstring.

    With ``keep_going``, a revision whose upgrade (or second upgrade) fails is stamped
    and the stairway goes on, so the report has a row for every revision; drift and the
    final downgrade are then not checked.
    """
    started = time.monotonic()
    project = AlembicProject(settings)
    heads = project.heads()
    if len(heads) > 1:
        raise MigrationScriptError(multiple_heads_problem(heads))
    metadata = (
        load_metadata(settings.raw.migrations.metadata)
        if settings.raw.migrations.metadata
        else None
    )
    baseline = load_baseline(settings)
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    opts = settings.raw.migrations
    timeout = settings.raw.postgres.connect_timeout
    with db.scratch_database(
        url,
        settings.raw.postgres.maintenance_db,
        f"rg_test_{settings.service}",
        connect_timeout=timeout,
    ) as scratch_url:
        report = HarnessReport(scratch_database=db.database_name(scratch_url))
        with (
            sqlalchemy_connection(
                scratch_url,
                "migrate test",
                lock_timeout=opts.lock_timeout,
                statement_timeout=opts.statement_timeout,
                connect_timeout=timeout,
            ) as conn,
            db.connect(scratch_url, "migrate test snapshot") as snap_conn,
        ):
            if baseline is not None:
                _apply_baseline(baseline, conn, str(opts.baseline))
            project.require_shared_connection(conn)
            stairway = _Stairway(
                project,
                conn,
                lambda: snapshot(snap_conn),
                report,
                progress or (lambda _: None),
                keep_going,
            )
            path = project.upgrade_path((), "head") or []
            if stairway.run(path) and not report.stamped:
                if metadata is not None:
                    report.drift = drift(conn, metadata)
                    if report.drift:
                        report.problems.append(
                            f"schema at head differs from {opts.metadata}"
                            f" ({len(report.drift)} difference(s))"
                        )
                stairway.down_all(path)
    report.duration_s = time.monotonic() - started
    return report


def render_text(report: HarnessReport) -> str:
    """The report as ``migrate test`` prints it: one row per revision, then the verdict."""
    lines = [
        "",
        table(
            ["revision", "up", "down", "up again", "up ms", "down ms", "note"],
            [
                (
                    r.revision,
                    r.up,
                    r.down,
                    r.reup,
                    f"{r.up_ms:.0f}",
                    f"{r.down_ms:.0f}",
                    r.irreversible_reason or "; ".join(r.details),
                )
                for r in report.revisions
            ],
        ),
    ]
    if report.stopped_at is not None:
        lines.append(
            f"stairway stopped at {report.stopped_at}: drift and final downgrade not checked"
            " (--keep-going tries every revision)"
        )
    elif report.stamped:
        lines.append(
            f"stamped past {', '.join(report.stamped)}: drift and final downgrade not checked"
        )
    elif report.drift is None:
        lines.append("drift: not checked (set migrations.metadata)")
    else:
        lines.append(f"drift: {len(report.drift)} difference(s)")
        lines += [f"  {item}" for item in report.drift]
    lines.append(f"irreversible: {', '.join(report.irreversible) or 'none'}")
    if report.lowest_reached is not None:
        lines.append(f"downgraded to: {report.lowest_reached}")
    lines += [f"problem: {problem}" for problem in report.problems]
    lines.append(f"{'passed' if report.ok else 'FAILED'} in {report.duration_s:.1f}s")
    return "\n".join(lines)
