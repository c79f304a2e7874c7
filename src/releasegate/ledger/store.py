"""The release ledger: one row per release attempt, an append-only log of its steps.

It lives in the target Postgres (schema ``releasegate``) and is written on a
connection of its own in autocommit mode, so that a migration rolled back by its
transaction never takes its ledger entries with it.

A release runs backups, migrations and restores that open rows of their own; they are
its children (``parent_id``), found through the release lock they share, so that a
release is one row in the views.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from releasegate import db
from releasegate.errors import ConfigError
from releasegate.ledger.schema import LATEST_VERSION, LEDGER_SCHEMA, MIGRATIONS
from releasegate.lock import LockHolder, find_holder, shared_lock
from releasegate.secrets import redact

# Transaction-scoped advisory lock key guarding the ledger's own schema migrations.
_SCHEMA_LOCK = 0x52470000


class Outcome(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PAUSED = "paused"  # stopped at a canary pause; ``release --resume`` continues it
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    ABORTED = "aborted"  # stopped by a signal; the events say what had committed
    # A dry run's outcomes: the same words as its result and the workflow's outputs.
    DRY_RUN = "dry_run"
    BLOCKED = "blocked"
    # Shown, never stored: a "running" row whose runner no longer holds the release lock.
    INTERRUPTED = "interrupted"


class StepStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    PAUSED = "paused"
    INFO = "info"


@dataclass(frozen=True)
class Event:
    id: int
    release_id: int
    at: datetime
    step: str
    status: str
    duration_ms: float | None
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat()}


@dataclass(frozen=True)
class Release:
    id: int
    service: str
    kind: str
    git_sha: str | None
    image_ref: str | None
    image_digest: str | None
    performer: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    alembic_before: str | None
    alembic_after: str | None
    redis_before: str | None
    redis_after: str | None
    qdrant_before: str | None
    qdrant_after: str | None
    summary: dict[str, Any]
    parent_id: int | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish; None while it runs."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "events"}
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        data["duration_s"] = self.duration_s
        data["events"] = [e.to_dict() for e in self.events]
        return data


# Kinds that are steps of a release when opened under its shared lock; other kinds
# opened under a shared lock (a release, a rollback) are the parent themselves.
NESTED_KINDS = frozenset({"backup", "migrate", "restore"})


_STORE_COLUMNS = ("alembic", "redis", "qdrant")
_RELEASE_COLUMNS = (
    "git_sha",
    "image_ref",
    "image_digest",
    "alembic_before",
    "alembic_after",
    "redis_before",
    "redis_after",
    "qdrant_before",
    "qdrant_after",
)


def _redact_json(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    return value


def _clean(detail: Mapping[str, Any] | None) -> Jsonb:
    """JSON for the ledger with secrets redacted: the ledger is evidence others read.

    Redaction works on the decoded strings: in JSON text a secret with a quote or a
    non-ASCII character is escaped and would not be found.
    """
    return Jsonb(_redact_json(json.loads(json.dumps(detail or {}, default=str))))


class Ledger:
    """Read and write the ledger through one autocommit connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @classmethod
    @contextmanager
    def open(cls, url: str, purpose: str = "ledger") -> Iterator[Ledger]:
        """Connect, make sure the ledger schema is current, and close on exit."""
        conn = db.connect(url, purpose)
        try:
            ledger = cls(conn)
            ledger.ensure_schema()
            yield ledger
        finally:
            conn.close()

    def schema_version(self) -> int:
        row = self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.schema_version",)
        ).fetchone()
        if not row or not row[0]:
            return 0
        version = self.conn.execute(
            f"SELECT coalesce(max(version), 0) FROM {LEDGER_SCHEMA}.schema_version"
        ).fetchone()
        return int(version[0]) if version else 0

    def schema_owner(self) -> tuple[str, bool] | None:
        """The role owning the ledger schema, and whether this session acts as it."""
        row = self.conn.execute(
            "SELECT nspowner::regrole::text, pg_has_role(current_user, nspowner, 'USAGE')"
            " FROM pg_namespace WHERE nspname = %s",
            (LEDGER_SCHEMA,),
        ).fetchone()
        return None if row is None else (str(row[0]), bool(row[1]))

    def ensure_schema(self) -> int:
        """Create or upgrade the ledger schema; returns the number of versions applied.

        A schema owned by another role (see :mod:`releasegate.ledger.access`) is never
        touched: when it is older than this releasegate, its owner must upgrade it.
        """
        version = self.schema_version()
        if version >= LATEST_VERSION:
            return 0
        owner = self.schema_owner()
        if owner is not None and not owner[1]:
            raise ConfigError(
                f"the ledger schema '{LEDGER_SCHEMA}' belongs to role {owner[0]} and is at"
                f" version {version}; this releasegate needs version {LATEST_VERSION}:"
                " run 'releasegate ledger setup' with the owner's URL"
            )
        applied = 0
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}")
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {LEDGER_SCHEMA}.schema_version ("
                " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = self.schema_version()
            for version, ddl in MIGRATIONS:
                if version <= current:
                    continue
                self.conn.execute(ddl)
                self.conn.execute(
                    f"INSERT INTO {LEDGER_SCHEMA}.schema_version (version) VALUES (%s)", (version,)
                )
                applied += 1
        return applied

    def start_release(self, service: str, kind: str, performer: str, **columns: str | None) -> int:
        """Open a release row (outcome ``running``) and return its id.

        Inside a release (this thread shares the service's lock, which carries the
        release's row), a backup, migrate or restore row becomes the release's child.
        """
        unknown = set(columns) - set(_RELEASE_COLUMNS)
        if unknown:
            raise TypeError(f"unknown release columns: {sorted(unknown)}")
        held = shared_lock(service)
        parent = held.ledger_row if held is not None else None
        names = ["service", "kind", "performer", "parent_id", *columns]
        values = [service, kind, performer, parent, *columns.values()]
        placeholders = ", ".join(["%s"] * len(values))
        row = self.conn.execute(
            f"INSERT INTO {LEDGER_SCHEMA}.releases ({', '.join(names)})"
            f" VALUES ({placeholders}) RETURNING id",
            values,
        ).fetchone()
        assert row is not None
        release_id = int(row[0])
        if held is not None and parent is None and kind not in NESTED_KINDS:
            held.ledger_row = release_id
        return release_id

    def record_event(
        self,
        release_id: int,
        step: str,
        status: StepStatus | str,
        duration_s: float | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one step to the log."""
        self.conn.execute(
            f"INSERT INTO {LEDGER_SCHEMA}.events (release_id, step, status, duration_ms, detail)"
            " VALUES (%s, %s, %s, %s, %s)",
            (
                release_id,
                step,
                str(status),
                None if duration_s is None else round(duration_s * 1000, 3),
                _clean(detail),
            ),
        )

    def update_release(self, release_id: int, **columns: str | None) -> None:
        """Set release columns known only later (digests, versions after)."""
        unknown = set(columns) - set(_RELEASE_COLUMNS)
        if unknown:
            raise TypeError(f"unknown release columns: {sorted(unknown)}")
        if not columns:
            return
        sets = ", ".join(f"{name} = %s" for name in columns)
        self.conn.execute(
            f"UPDATE {LEDGER_SCHEMA}.releases SET {sets} WHERE id = %s",
            [*columns.values(), release_id],
        )

    def merge_summary(self, release_id: int, summary: Mapping[str, Any]) -> None:
        """Merge keys into a release's summary while it runs (e.g. its undo log)."""
        self.conn.execute(
            f"UPDATE {LEDGER_SCHEMA}.releases SET summary = summary || %s WHERE id = %s",
            (_clean(summary), release_id),
        )

    def set_outcome(self, release_id: int, outcome: Outcome) -> None:
        """Change the outcome of a finished release (e.g. rolled back later by hand)."""
        self.conn.execute(
            f"UPDATE {LEDGER_SCHEMA}.releases SET outcome = %s WHERE id = %s",
            (str(outcome), release_id),
        )

    def finish_release(
        self,
        release_id: int,
        outcome: Outcome,
        summary: Mapping[str, Any] | None = None,
        **columns: str | None,
    ) -> None:
        """Close a release row with its outcome; ``summary`` is merged into the stored one.

        Store versions the row does not carry are taken from its children: before from
        the first child that knows it, after from the last.
        """
        self.update_release(release_id, **columns)
        self.conn.execute(
            f"UPDATE {LEDGER_SCHEMA}.releases SET outcome = %s, finished_at = clock_timestamp(),"
            " summary = summary || %s WHERE id = %s",
            (str(outcome), _clean(summary), release_id),
        )
        sets = ", ".join(
            f"{store}_{when} = coalesce(r.{store}_{when}, (SELECT c.{store}_{when}"
            f" FROM {LEDGER_SCHEMA}.releases c WHERE c.parent_id = r.id"
            f" AND c.{store}_{when} IS NOT NULL ORDER BY c.id {order} LIMIT 1))"
            for store in _STORE_COLUMNS
            for when, order in (("before", "ASC"), ("after", "DESC"))
        )
        self.conn.execute(
            f"UPDATE {LEDGER_SCHEMA}.releases r SET {sets} WHERE r.id = %s"
            f" AND EXISTS (SELECT 1 FROM {LEDGER_SCHEMA}.releases c WHERE c.parent_id = r.id)",
            (release_id,),
        )

    def releases(
        self,
        service: str | None = None,
        limit: int = 20,
        with_events: bool = False,
        nested: bool = False,
        kind: str | None = None,
    ) -> list[Release]:
        """The newest release rows first; a release's own steps only with ``nested``;
        only rows of ``kind`` (``release``, ``rollback``, ``backup``...) when given."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"SELECT * FROM {LEDGER_SCHEMA}.releases"
                " WHERE (%(service)s::text IS NULL OR service = %(service)s)"
                " AND (%(nested)s OR parent_id IS NULL)"
                " AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
                " ORDER BY id DESC LIMIT %(limit)s",
                {"service": service, "limit": limit, "nested": nested, "kind": kind},
            )
            rows = self._as_shown([Release(**row) for row in cur.fetchall()])
        if with_events:
            rows = [Release(**{**r.__dict__, "events": self.events(r.id)}) for r in rows]
        return rows

    def first_deferral(self, service: str, revision: str) -> datetime | None:
        """When the first succeeded release of ``service`` that deferred the contract
        ``revision`` finished: since then the service has run without what it removes."""
        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT min(finished_at) FROM {LEDGER_SCHEMA}.releases"
                " WHERE service = %s AND kind = 'release' AND outcome = 'succeeded'"
                " AND summary -> 'plan' -> 'deferred' ? %s",
                (service, revision),
            )
            row = cur.fetchone()
        return row[0] if row else None

    def release(self, release_id: int) -> Release | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT * FROM {LEDGER_SCHEMA}.releases WHERE id = %s", (release_id,))
            row = cur.fetchone()
        if row is None:
            return None
        [release] = self._as_shown([Release(**row, events=self.events(release_id))])
        return release

    def children(self, release_id: int) -> list[Release]:
        """The rows a release's own steps opened (backup, migrations, restores), in order."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"SELECT * FROM {LEDGER_SCHEMA}.releases WHERE parent_id = %s ORDER BY id",
                (release_id,),
            )
            return self._as_shown([Release(**row) for row in cur.fetchall()])

    def _as_shown(self, rows: list[Release]) -> list[Release]:
        """``running`` rows whose runner is gone become ``interrupted``.

        A runner holds the service's release lock (a session-level advisory lock, freed
        by Postgres when its connection drops) from before it opens its row until after
        it closes it. So a row is still running only while the lock is held by a session
        that started before the row did; a killed runner's row stays ``running`` in the
        table (``release --resume`` looks for it) but is shown as interrupted.
        """
        holders: dict[str, LockHolder | None] = {}
        shown = []
        for release in rows:
            if release.outcome == Outcome.RUNNING:
                if release.service not in holders:
                    holders[release.service] = find_holder(self.conn, release.service)
                holder = holders[release.service]
                alive = holder is not None and (
                    holder.since is None or holder.since <= release.started_at
                )
                if not alive:
                    release = dataclasses.replace(release, outcome=str(Outcome.INTERRUPTED))
            shown.append(release)
        return shown

    def events(self, release_id: int) -> list[Event]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"SELECT * FROM {LEDGER_SCHEMA}.events WHERE release_id = %s ORDER BY id",
                (release_id,),
            )
            return [Event(**row) for row in cur.fetchall()]
