"""``releasegate migrate test``: prove a migration chain on a throwaway database.

On a scratch database created (and dropped) on the configured server:

1. a *stairway* from base: for each revision, upgrade, downgrade, upgrade again;
   after each downgrade the schema must equal the one before the revision, and after
   the second upgrade the one after the first;
2. at head, the schema is compared with the service's SQLAlchemy metadata (drift);
3. everything is downgraded again, as far as declared-irreversible revisions allow;
   at base the schema must be empty (no trace left).

Revisions whose ``downgrade()`` raises ``NotImplementedError`` are reported as
irreversible; one whose downgrade runs but leaves a trace is a failure.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from releasegate import db
from releasegate.config import Settings
from releasegate.errors import ConfigError, MigrationScriptError
from releasegate.migrations.commands import multiple_heads_problem
from releasegate.migrations.project import AlembicProject, Revision, sqlalchemy_connection
from releasegate.migrations.schema import SchemaSnapshot, diff, snapshot


@dataclass
class RevisionCheck:
    """What the stairway found for one revision."""

    revision: str
    doc: str
    up: str = "not run"  # ok | failed
    down: str = "not run"  # ok | irreversible | failed | leaves trace
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


def drift(connection: Connection, metadata: MetaData) -> list[str]:
    """Differences between the database and the metadata, as autogenerate sees them."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    try:
        return [str(d) for d in compare_metadata(context, metadata)]
    finally:
        connection.rollback()


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
    ) -> None:
        self.project = project
        self.conn = conn
        self.snap = snap
        self.report = report
        self.progress = progress
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

    def run(self, path: list[Revision]) -> bool:
        """The stairway; False when an upgrade failed and the chain cannot go on."""
        before = self.snap()
        for rev in path:
            check = RevisionCheck(rev.id, rev.doc)
            self.report.revisions.append(check)
            check.up_ms, error = self._timed(partial(self.project.upgrade_one, self.conn, rev))
            if error:
                check.up = "failed"
                check.details.append(f"upgrade failed: {db.first_line(error)}")
                self.report.problems.append(f"{rev.id}: upgrade failed: {db.first_line(error)}")
                self.report.stopped_at = rev.id
                return False
            check.up = "ok"
            self.after[rev.id] = after = self.snap()
            self._down_and_up(rev, check, before, after)
            self.progress(f"{rev.id}: up {check.up}, down {check.down}, up again {check.reup}")
            if check.reup == "failed":
                # The database is no longer at rev.id: the next revision cannot follow.
                self.report.stopped_at = rev.id
                return False
            before = after
        return True

    def _down_and_up(
        self, rev: Revision, check: RevisionCheck, before: SchemaSnapshot, after: SchemaSnapshot
    ) -> None:
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
            self.report.final_differences = (
                [] if now.is_empty else sorted(key for key in now.objects if key != "schema public")
            )
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


def run_test(settings: Settings, *, progress: Callable[[str], None] | None = None) -> HarnessReport:
    """Run the whole harness on a scratch database; see the module docstring."""
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
            stairway = _Stairway(
                project, conn, lambda: snapshot(snap_conn), report, progress or (lambda _: None)
            )
            path = project.upgrade_path((), "head") or []
            if stairway.run(path):
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
