"""``releasegate migrate verify``: does the live schema equal what the migrations produce?

A scratch database on the same server is migrated from base to the live database's
revision; the two schemas are then compared object by object. Hand-made changes
(a hotfix index, a column added in a console) show up as differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from releasegate import db
from releasegate.config import Settings
from releasegate.errors import MigrationFailed, StateError
from releasegate.migrations.commands import error_text, format_revisions, unknown_revision_problem
from releasegate.migrations.project import (
    AlembicProject,
    Revision,
    current_revisions,
    sqlalchemy_connection,
)
from releasegate.migrations.schema import SchemaDifference, diff, snapshot


@dataclass
class VerifyReport:
    target: str
    revision: tuple[str, ...] | None
    differences: list[SchemaDifference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "target": self.target,
            "revision": format_revisions(self.revision),
            "differences": [
                {"key": d.key, "kind": d.kind, "expected": d.expected, "actual": d.actual}
                for d in self.differences
            ],
        }


def _rebuild_one(project: AlembicProject, conn: Connection, rev: Revision, scratch: str) -> None:
    """Apply ``rev`` to the scratch database; a failure names the revision and the database."""
    try:
        project.upgrade_one(conn, rev)
    except Exception as exc:
        conn.rollback()
        raise MigrationFailed(
            f"migrate verify cannot rebuild the schema: revision {rev.id} failed in scratch"
            f" database {scratch}: {error_text(exc)}; the live database was not changed"
        ) from None


def verify(settings: Settings) -> VerifyReport:
    """Compare the live schema with a scratch database migrated to the same revision."""
    project = AlembicProject(settings)
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    timeout = settings.raw.postgres.connect_timeout
    with db.connect(url, "migrate verify", connect_timeout=timeout) as live:
        live_snapshot = snapshot(live)
    with sqlalchemy_connection(url, "migrate verify", connect_timeout=timeout) as conn:
        current = current_revisions(conn)
    unknown = [r for r in current or () if not project.knows(r)]
    if unknown:
        raise StateError(unknown_revision_problem(unknown))
    with db.scratch_database(
        url,
        settings.raw.postgres.maintenance_db,
        f"rg_verify_{settings.service}",
        connect_timeout=timeout,
    ) as scratch_url:
        with sqlalchemy_connection(
            scratch_url,
            "migrate verify",
            statement_timeout=settings.raw.migrations.statement_timeout,
            connect_timeout=timeout,
        ) as conn:
            for head in current or ():
                for rev in project.upgrade_path(current_revisions(conn) or (), head) or []:
                    _rebuild_one(project, conn, rev, db.database_name(scratch_url))
        with db.connect(scratch_url, "migrate verify", connect_timeout=timeout) as scratch:
            expected = snapshot(scratch)
    return VerifyReport(db.describe_target(url), current, diff(expected, live_snapshot))
