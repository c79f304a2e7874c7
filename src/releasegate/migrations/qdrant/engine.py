"""Versioned Qdrant migrations: blue/green collections behind an alias.

The model
=========

A service reads a *logical* collection, say ``documents``, which is an **alias**. The
physical collections behind it are named ``documents__v1``, ``documents__v2``, ... .
Migration modules live in ``qdrant.migrations`` (default ``migrations/qdrant/``) and are
named ``NNNN_name.py``::

    \"\"\"Re-embed documents at 128 dimensions.\"\"\"   # first line = the migration's doc

    collection = "documents"          # the logical collection (alias) it changes

    def up(ctx):                      # build and verify ctx.new from ctx.old
        ctx.rebuild(vectors=..., payload_indexes={...}, transform=...)

    def down(ctx):                    # optional work before the alias moves back
        ctx.drop_new = True           # also drop ctx.new once the alias is back

The k-th migration of a collection (in version order) takes it from ``name__v{k}`` to
``name__v{k+1}``. ``up`` of one migration:

1. creates ``ctx.new`` with the new config (vectors, sparse vectors, payload indexes);
2. copies the points of ``ctx.old`` in batches of ``qdrant.batch_size`` (scroll + upsert),
   through the migration's ``transform``;
3. verifies: the same number of points, and ``qdrant.verify_sample`` random points of the
   old collection, transformed again, found in the new one (vector within float
   tolerance, payload equal, old payload keys kept unless ``keep_payload=False``, plus
   the migration's own ``check``);
4. only then moves the alias, deleting and creating it in ONE ``update_collection_aliases``
   call, so readers never see no collection.

The old collection is only ever read, so a failed migration leaves it exactly as it was,
and the alias is never moved. A new collection that failed verification is dropped (it is
known to be wrong); one whose copy was interrupted is kept, and the next ``up`` resumes
the copy after the last point it holds (see :meth:`MigrationContext.create_new`).
``down`` moves the alias back to the old collection, which must still exist.

Writes the service makes to the old collection while a copy runs are not carried over:
run migrations while writers are paused (verification fails when the number of points
changed meanwhile, but an update to an existing point goes unnoticed).

Where the applied version lives
===============================

In the alias map, and nowhere else in Qdrant: ``documents -> documents__v2`` *is* "the
first migration of ``documents`` is applied". The alias swap is the commit point of a
migration and is atomic, so the recorded version cannot disagree with what the service
reads. A separate marker (a metadata collection or a payload field) would be a second
write after the swap, and a crash between the two would leave them disagreeing. It also
means a restored backup (which records aliases) brings its version back with it. The
global version reported to the ledger (``qdrant_before``/``qdrant_after``) is the newest
migration such that it and every older one are applied, or ``base``.

The ledger mirrors every run: ``up``/``down`` open a release (kind ``migrate``, summary
``{"store": "qdrant"}``) under the release lock and record one event per migration
(``qdrant upgrade NNNN`` / ``qdrant downgrade NNNN``) with its duration and counts; a copy
also records ``qdrant copy NNNN`` when it starts, which is how a later run knows that a
leftover new collection is an interrupted copy that may be resumed.
"""

from __future__ import annotations

import copy
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

from qdrant_client import QdrantClient, models

from releasegate.backup.qdrant import Reservoir, compare_points
from releasegate.config import Settings
from releasegate.errors import (
    ConfigError,
    LockNotObtained,
    MigrationFailed,
    MigrationScriptError,
    StateError,
)
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.ledger.schema import LEDGER_SCHEMA
from releasegate.lock import HeldLock, service_lock
from releasegate.migrations.loader import load_module
from releasegate.runinfo import git_sha, performer
from releasegate.stores.qdrant import (
    CollectionSpec,
    PointData,
    PointId,
    QdrantStore,
    first_line,
    index_schema_to_data,
    using,
)

_FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.py$")
_PHYSICAL_RE = re.compile(r"^(?P<name>.+)__v(?P<n>\d+)$")
BASE = "base"

Transform = Callable[[PointData], PointData | None]
Check = Callable[[PointData, PointData], str | None]


def physical_name(collection: str, version: int) -> str:
    """``documents``, 2 -> ``documents__v2``."""
    return f"{collection}__v{version}"


def parse_physical(name: str) -> tuple[str, int] | None:
    """``documents__v2`` -> (``documents``, 2); None for other names."""
    match = _PHYSICAL_RE.match(name)
    return (match.group("name"), int(match.group("n"))) if match else None


class VerificationFailed(MigrationFailed):
    """The new collection does not hold what the migration should have produced."""


# -- loading migration modules -----------------------------------------------------------


@dataclass(frozen=True)
class QdrantMigration:
    """One migration module: its version, logical collection and physical names."""

    version: str
    name: str
    collection: str
    step: int  # the step-th migration of its collection: v{step} -> v{step + 1}
    doc: str
    path: Path
    module: ModuleType = field(repr=False, compare=False)

    @property
    def old(self) -> str:
        return physical_name(self.collection, self.step)

    @property
    def new(self) -> str:
        return physical_name(self.collection, self.step + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "collection": self.collection,
            "from": self.old,
            "to": self.new,
            "doc": self.doc,
        }


def migrations_dir(settings: Settings) -> Path:
    if settings.raw.qdrant is None:
        raise ConfigError(f"{settings.path.name} has no [qdrant] section")
    return settings.resolve_path(settings.raw.qdrant.migrations)


def _load_module(path: Path) -> ModuleType:
    return load_module(path, f"releasegate_qdrant_{path.stem}", "Qdrant migration")


def load_migrations(settings: Settings) -> list[QdrantMigration]:
    """The migration modules of ``qdrant.migrations``, oldest first.

    Raises :class:`MigrationScriptError` (exit 2) for a missing folder, a duplicate
    version, a module that does not load, or one without ``collection``/``up``/``down``.
    """
    directory = migrations_dir(settings)
    if not directory.is_dir():
        raise MigrationScriptError(
            f"Qdrant migrations folder not found: {directory} (qdrant.migrations in the config)"
        )
    for extra in [settings.root, *settings.python_path]:
        if str(extra) not in sys.path:
            sys.path.insert(0, str(extra))
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.py")):
        match = _FILE_RE.match(path.name)
        if not match:
            continue
        if match.group(1) in found:
            raise MigrationScriptError(
                f"Qdrant migrations {found[match.group(1)].name} and {path.name}"
                f" share version {match.group(1)}"
            )
        found[match.group(1)] = path
    migrations: list[QdrantMigration] = []
    steps: dict[str, int] = {}
    for version, path in sorted(found.items()):
        module = _load_module(path)
        collection = getattr(module, "collection", None)
        if not isinstance(collection, str) or not collection or parse_physical(collection):
            raise MigrationScriptError(
                f"Qdrant migration {path.name} must set collection = '<logical name>'"
                " (the alias, not a name__vN collection)"
            )
        for hook in ("up", "down"):
            if not callable(getattr(module, hook, None)):
                raise MigrationScriptError(f"Qdrant migration {path.name} has no {hook}(ctx)")
        steps[collection] = steps.get(collection, 0) + 1
        doc = (module.__doc__ or "").strip().splitlines()
        migrations.append(
            QdrantMigration(
                version=version,
                name=_FILE_RE.match(path.name).group(2),  # type: ignore[union-attr]
                collection=collection,
                step=steps[collection],
                doc=doc[0] if doc else "",
                path=path,
                module=module,
            )
        )
    return migrations


# -- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectionState:
    """Where one logical collection stands."""

    collection: str
    physical: str | None  # what the alias points at
    applied: list[str]
    pending: list[str]
    leftovers: list[str]  # name__vN collections newer than the alias target, not aliased
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class QdrantStatus:
    """Where the Qdrant store stands against the migrations folder."""

    target: str
    version: str
    applied: list[QdrantMigration]
    pending: list[QdrantMigration]
    collections: list[CollectionState]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "version": self.version,
            "applied": [m.version for m in self.applied],
            "pending": [m.to_dict() for m in self.pending],
            "collections": [c.to_dict() for c in self.collections],
            "problems": list(self.problems),
        }


def _collection_state(
    collection: str,
    own: list[QdrantMigration],
    aliases: Mapping[str, str],
    live: set[str],
) -> CollectionState:
    versions = [m.version for m in own]
    target = aliases.get(collection)
    if target is None:
        if collection in live:
            problem = (
                f"{collection} is a collection, not an alias: releasegate migrates"
                f" {physical_name(collection, 1)}, {physical_name(collection, 2)}, ... behind"
                f" an alias {collection}"
            )
        else:
            problem = (
                f"{collection} does not exist: create {physical_name(collection, 1)} and the"
                " alias (bootstrap_collection) before migrating it"
            )
        return CollectionState(collection, None, [], versions, [], problem)
    parsed = parse_physical(target)
    if parsed is None or parsed[0] != collection:
        problem = f"alias {collection} points at {target}, not at a {collection}__vN collection"
        return CollectionState(collection, target, [], versions, [], problem)
    done = parsed[1] - 1
    leftovers = sorted(
        name
        for name in live
        if (p := parse_physical(name)) and p[0] == collection and p[1] > parsed[1]
    )
    if done > len(own):
        problem = (
            f"alias {collection} points at {target}, but the migrations only go up to"
            f" {physical_name(collection, len(own) + 1)}: Qdrant is ahead of the code"
            " (was the application rolled back?)"
        )
        return CollectionState(collection, target, versions, [], leftovers, problem)
    return CollectionState(collection, target, versions[:done], versions[done:], leftovers)


def _status(store: QdrantStore, migrations: list[QdrantMigration]) -> QdrantStatus:
    aliases = store.aliases()
    live = set(store.collections())
    by_collection: dict[str, list[QdrantMigration]] = {}
    for m in migrations:
        by_collection.setdefault(m.collection, []).append(m)
    states = [_collection_state(c, own, aliases, live) for c, own in by_collection.items()]
    applied_versions = {v for s in states for v in s.applied}
    applied = [m for m in migrations if m.version in applied_versions]
    pending = [m for m in migrations if m.version not in applied_versions]
    problems = [s.problem for s in states if s.problem]
    version = BASE
    for m in migrations:
        if m.version not in applied_versions:
            break
        version = m.version
    gaps = [m.version for m in pending if any(a.version > m.version for a in applied)]
    if gaps:
        problems.append(
            f"migrations {', '.join(gaps)} are not applied while newer ones are:"
            " 'up' applies them in version order"
        )
    return QdrantStatus(store.target, version, applied, pending, states, problems)


def status(settings: Settings, *, store: QdrantStore | None = None) -> QdrantStatus:
    """Applied and pending Qdrant migrations, per logical collection, with any problems.

    Reads only Qdrant (no Postgres, no lock). Problems: a logical collection that is
    missing or is not an alias, an alias ahead of the migrations, migrations applied out
    of order.
    """
    migrations = load_migrations(settings)
    with using(settings, store) as st:
        return _status(st, migrations)


def applied_version(settings: Settings, store: QdrantStore) -> str:
    """The global applied version (``NNNN`` or ``base``); for manifests and the ledger."""
    return _status(store, load_migrations(settings)).version


# -- bootstrap --------------------------------------------------------------------------------


def bootstrap_collection(store: QdrantStore, collection: str, spec: CollectionSpec) -> str:
    """Create ``<collection>__v1`` and the alias ``collection`` if it does not exist yet.

    Idempotent: an existing alias is left alone (its target is returned); an existing
    ``__v1`` without the alias gets the alias. A physical collection already named
    ``collection`` is a :class:`StateError`: it would have to be copied into ``__v1``.
    """
    aliases = store.aliases()
    if collection in aliases:
        return aliases[collection]
    live = store.collections()
    if collection in live:
        raise StateError(
            f"{collection} is a collection, not an alias: copy it into"
            f" {physical_name(collection, 1)} and alias that as {collection}"
        )
    first = physical_name(collection, 1)
    if first not in live:
        store.create_collection(first, spec)
    store.set_aliases({collection: first})
    return first


# -- the migration context -------------------------------------------------------------------


class MigrationContext:
    """What a migration's ``up(ctx)``/``down(ctx)`` works with.

    ``ctx.old``/``ctx.new`` are the physical collections before and after the migration
    (in both directions), ``ctx.collection`` the logical one (the alias). ``up`` calls
    :meth:`rebuild`, or for finer control :meth:`create_new`, :meth:`copy` and
    :meth:`verify`; the alias moves only when :meth:`verify` has passed. ``down`` may set
    :attr:`drop_new` so that ``ctx.new`` is dropped after the alias moved back.
    """

    def __init__(
        self,
        store: QdrantStore,
        migration: QdrantMigration,
        *,
        batch_size: int,
        verify_sample: int,
        may_resume: bool = False,
        on_copy_start: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.migration = migration
        self.collection = migration.collection
        self.old = migration.old
        self.new = migration.new
        self.batch_size = batch_size
        self.verify_sample = verify_sample
        self.may_resume = may_resume
        self.verified = False
        self.drop_new = False
        # What up() is doing: "up", "create", "copy", "verify", then "swap" (engine).
        self.phase = "up"
        # Counts reported in the ledger event of this migration.
        self.report: dict[str, Any] = {}
        self._on_copy_start = on_copy_start
        self._resume_from: PointId | None = None
        self._spec: CollectionSpec | None = None

    @property
    def client(self) -> QdrantClient:
        """The raw qdrant-client, for what the helpers do not cover."""
        return self.store.client

    def old_spec(self) -> CollectionSpec:
        return self.store.spec(self.old)

    def new_spec(
        self,
        *,
        vectors: models.VectorParams | Mapping[str, models.VectorParams] | None = None,
        sparse_vectors: Mapping[str, models.SparseVectorParams] | None = None,
        payload_indexes: Mapping[str, Any] | None = None,
        drop_payload_indexes: tuple[str, ...] = (),
    ) -> CollectionSpec:
        """The old collection's spec with these changes (None keeps what the old one has)."""
        old = self.old_spec()
        if vectors is None:
            new_vectors = dict(old.vectors)
        elif isinstance(vectors, models.VectorParams):
            new_vectors = {"": vectors}
        else:
            new_vectors = dict(vectors)
        sparse = dict(old.sparse_vectors if sparse_vectors is None else sparse_vectors)
        indexes = {k: v for k, v in old.payload_indexes.items() if k not in drop_payload_indexes}
        indexes |= {k: index_schema_to_data(v) for k, v in (payload_indexes or {}).items()}
        return CollectionSpec(new_vectors, sparse, dict(sorted(indexes.items())))

    def create_new(self, spec: CollectionSpec) -> None:
        """Create ``ctx.new`` with ``spec``, or pick up an interrupted copy into it.

        A ``ctx.new`` left by an interrupted copy of this migration (the ledger says so)
        with the same vectors is resumed: :meth:`copy` continues after the last point it
        holds (points are copied in id order, and upserts are idempotent). Any other
        leftover (a different config, or kept by an earlier ``down``) is dropped and
        built again, so stale points never survive.
        """
        self._spec = spec
        self.phase = "create"
        if self.store.exists(self.new):
            existing = self.store.spec(self.new)
            have, want = existing.summary(), spec.summary()
            same = all(have[k] == want[k] for k in ("vectors", "sparse_vectors"))
            if self.may_resume and same:
                for name, schema in spec.payload_indexes.items():
                    if existing.payload_indexes.get(name) != schema:
                        self.store.create_payload_index(self.new, name, schema)
                self._resume_from = self._last_id(self.new)
                self.report["resumed_from_points"] = self.store.count(self.new)
                return
            self.store.drop_collection(self.new)
            self.report["dropped_leftover"] = True
        self.store.create_collection(self.new, spec)

    def _last_id(self, collection: str) -> PointId | None:
        last: PointId | None = None
        for batch in self.store.scroll_batches(
            collection, max(self.batch_size, 1000), with_vectors=False, with_payload=False
        ):
            last = batch[-1].id
        return last

    def copy(self, transform: Transform | None = None, *, limit: int | None = None) -> int:
        """Copy ``ctx.old`` into ``ctx.new`` in batches, through ``transform``.

        ``transform`` gets each point (id, vector(s), payload as plain data) and returns
        the point to write, with the same id; returning None leaves the point out, which
        makes verification fail (a migration never loses points silently). Returns the
        number of points written by this call.
        """
        if self._spec is None:
            raise MigrationScriptError(f"{self.migration.path.name}: copy() before create_new()")
        self.phase = "copy"
        if self._on_copy_start:
            self._on_copy_start({"old": self.old, "new": self.new, "resume": self._resume_from})
        written = 0
        for batch in self.store.scroll_batches(
            self.old, self.batch_size, offset=self._resume_from, limit=limit
        ):
            out: list[PointData] = []
            for point in batch:
                result = transform(point) if transform else point
                if result is None:
                    continue
                if result.id != point.id:
                    raise VerificationFailed(
                        f"the transform changed point id {point.id!r} into {result.id!r}"
                    )
                out.append(result)
            self.store.upsert(self.new, out)
            written += len(out)
        self.report["copied"] = self.report.get("copied", 0) + written
        return written

    def verify(
        self,
        transform: Transform | None = None,
        *,
        keep_payload: bool = True,
        check: Check | None = None,
    ) -> None:
        """Compare ``ctx.new`` with ``ctx.old``; raise :class:`VerificationFailed` if it differs.

        Checks the config of ``ctx.new`` against the spec it was created with, the number
        of points, and ``verify_sample`` random points of ``ctx.old``: each, passed through
        ``transform`` again, must be in ``ctx.new`` (vectors within float tolerance,
        payload equal); with ``keep_payload`` every old payload key must keep its value;
        ``check(old_point, new_point)`` may return a reason for a mismatch.
        """
        self.phase = "verify"
        spec = self._spec or self.store.spec(self.new)
        got = self.store.spec(self.new).summary()
        if got != spec.summary():
            raise VerificationFailed(f"{self.new} has config {got}, expected {spec.summary()}")
        old_count, new_count = self.store.count(self.old), self.store.count(self.new)
        self.report |= {"points_old": old_count, "points_new": new_count}
        if old_count != new_count:
            raise VerificationFailed(
                f"{self.new} has {new_count} points, {self.old} has {old_count}"
            )
        reservoir = Reservoir(self.verify_sample)
        for batch in self.store.scroll_batches(
            self.old, max(self.batch_size, 1000), with_vectors=False, with_payload=False
        ):
            reservoir.offer(batch)
        ids = [p.id for p in reservoir.points]
        olds = self.store.retrieve(self.old, ids)
        news = self.store.retrieve(self.new, ids)
        problems: list[str] = []
        for point_id in ids:
            old = olds.get(point_id)
            if old is None:  # deleted from the old collection meanwhile
                problems.append(f"point {point_id!r} vanished from {self.old}")
                continue
            expected = transform(copy.deepcopy(old)) if transform else old
            new = news.get(point_id)
            why = None
            if expected is None:
                why = "dropped by the transform"
            else:
                why = compare_points(expected, new, spec)
            if why is None and new is not None and keep_payload:
                lost = sorted(k for k, v in old.payload.items() if new.payload.get(k, _NO) != v)
                if lost:
                    why = f"payload keys changed or lost: {', '.join(lost)}"
            if why is None and new is not None and check is not None:
                why = check(old, new)
            if why:
                problems.append(f"point {point_id!r}: {why}")
        self.report["verified_sample"] = len(ids)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise VerificationFailed(
                f"{len(problems)} of {len(ids)} sampled points differ: "
                + "; ".join(problems[:3])
                + more
            )
        self.verified = True

    def rebuild(
        self,
        *,
        vectors: models.VectorParams | Mapping[str, models.VectorParams] | None = None,
        sparse_vectors: Mapping[str, models.SparseVectorParams] | None = None,
        payload_indexes: Mapping[str, Any] | None = None,
        drop_payload_indexes: tuple[str, ...] = (),
        transform: Transform | None = None,
        keep_payload: bool = True,
        check: Check | None = None,
    ) -> None:
        """The whole schema change: :meth:`create_new`, :meth:`copy`, :meth:`verify`.

        ``vectors``/``sparse_vectors`` replace the old config when given;
        ``payload_indexes`` (field -> ``PayloadSchemaType`` or index params) are added to
        the old collection's, minus ``drop_payload_indexes``.
        """
        spec = self.new_spec(
            vectors=vectors,
            sparse_vectors=sparse_vectors,
            payload_indexes=payload_indexes,
            drop_payload_indexes=drop_payload_indexes,
        )
        self.create_new(spec)
        self.copy(transform)
        self.verify(transform, keep_payload=keep_payload, check=check)


_NO = object()


# -- running migrations ----------------------------------------------------------------------


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class QdrantStepResult:
    """One migration applied or undone, as recorded in the ledger."""

    version: str
    collection: str
    direction: Direction
    status: StepStatus
    duration_s: float
    alias_target: str  # where the alias points after the step
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "direction": str(self.direction),
            "status": str(self.status),
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class QdrantMigrateResult:
    """What :func:`up` or :func:`down` did, and the ledger release that records it."""

    release_id: int
    direction: Direction
    before: str
    after: str | None = None
    steps: list[QdrantStepResult] = field(default_factory=list)
    lock_wait_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "direction": str(self.direction),
            "before": self.before,
            "after": self.after,
            "lock_wait_s": round(self.lock_wait_s, 3),
            "steps": [s.to_dict() for s in self.steps],
        }


QdrantStepCallback = Callable[[QdrantStepResult], None]


def _step_name(direction: Direction, version: str) -> str:
    return f"qdrant {'upgrade' if direction is Direction.UP else 'downgrade'} {version}"


def _may_resume(ledger: Ledger, service: str, version: str) -> bool:
    """Whether the last recorded run of ``version`` is a copy that never finished."""
    row = ledger.conn.execute(
        f"SELECT e.step, e.status, e.detail FROM {LEDGER_SCHEMA}.events e"
        f" JOIN {LEDGER_SCHEMA}.releases r ON r.id = e.release_id"
        " WHERE r.service = %s AND e.step = ANY(%s) ORDER BY e.id DESC LIMIT 1",
        (
            service,
            [
                f"qdrant copy {version}",
                _step_name(Direction.UP, version),
                _step_name(Direction.DOWN, version),
            ],
        ),
    ).fetchone()
    if row is None:
        return False
    step, step_status, detail = row
    if step == f"qdrant copy {version}":
        return True  # started copying, then the process died before recording an outcome
    return bool(
        step == _step_name(Direction.UP, version)
        and step_status == StepStatus.FAILED
        and (detail or {}).get("phase") == "copy"
    )


class _Runner:
    def __init__(
        self,
        settings: Settings,
        store: QdrantStore,
        ledger: Ledger,
        result: QdrantMigrateResult,
        on_step: QdrantStepCallback | None,
        lock: HeldLock,
        migrations: list[QdrantMigration],
    ) -> None:
        assert settings.raw.qdrant is not None
        self.lock = lock
        self.migrations = migrations
        self.settings = settings
        self.section = settings.raw.qdrant
        self.store = store
        self.ledger = ledger
        self.result = result
        self.on_step = on_step

    def check_lock(self) -> None:
        """Stop (recording why) when the release lock was lost between migrations."""
        try:
            self.lock.ensure_held()
        except LockNotObtained as exc:
            now = _status(self.store, self.migrations).version
            self.result.after = now
            self.ledger.record_event(
                self.result.release_id, "lock", StepStatus.FAILED, None, {"error": str(exc)}
            )
            self.ledger.finish_release(
                self.result.release_id,
                Outcome.FAILED,
                {"store": "qdrant", "error": str(exc)},
                qdrant_after=now,
            )
            raise

    def _context(self, m: QdrantMigration, may_resume: bool) -> MigrationContext:
        def copy_started(detail: dict[str, Any]) -> None:
            self.ledger.record_event(
                self.result.release_id, f"qdrant copy {m.version}", StepStatus.INFO, None, detail
            )

        return MigrationContext(
            self.store,
            m,
            batch_size=self.section.batch_size,
            verify_sample=self.section.verify_sample,
            may_resume=may_resume,
            on_copy_start=copy_started,
        )

    def up(self, m: QdrantMigration) -> None:
        started = time.monotonic()
        ctx = self._context(m, _may_resume(self.ledger, self.settings.service, m.version))
        try:
            m.module.up(ctx)
            if not ctx.verified:
                raise VerificationFailed(
                    f"up() of {m.path.name} did not verify {m.new} (call ctx.rebuild or ctx.verify)"
                )
            ctx.phase = "swap"
            self.lock.ensure_held()  # the swap is the commit point: only under the lock
            self.store.set_aliases({m.collection: m.new})
        except Exception as exc:
            if isinstance(exc, VerificationFailed):
                if self.store.exists(m.new):
                    self.store.drop_collection(m.new)  # known wrong: never resume from it
                    ctx.report["dropped_new"] = True
            elif ctx.phase == "create":
                ctx.phase = "copy"  # nothing copied yet: the next run may start over or resume
            self._fail(m, Direction.UP, exc, time.monotonic() - started, ctx, ctx.phase)
        self._ok(m, Direction.UP, time.monotonic() - started, ctx, m.new)

    def down(self, m: QdrantMigration) -> None:
        started = time.monotonic()
        ctx = self._context(m, False)
        try:
            if not self.store.exists(m.old):
                raise StateError(f"{m.old} no longer exists: the alias cannot move back to it")
            m.module.down(ctx)
            self.store.set_aliases({m.collection: m.old})
            if ctx.drop_new and self.store.exists(m.new):
                self.store.drop_collection(m.new)
                ctx.report["dropped_new"] = True
        except Exception as exc:
            self._fail(m, Direction.DOWN, exc, time.monotonic() - started, ctx, "down")
        self._ok(m, Direction.DOWN, time.monotonic() - started, ctx, m.old)

    def _record(self, m: QdrantMigration, outcome: QdrantStepResult) -> None:
        self.result.steps.append(outcome)
        detail = {"collection": m.collection, "doc": m.doc, "alias_target": outcome.alias_target}
        detail |= outcome.detail
        if outcome.error:
            detail["error"] = outcome.error
        self.ledger.record_event(
            self.result.release_id,
            _step_name(outcome.direction, m.version),
            outcome.status,
            outcome.duration_s,
            detail,
        )
        if self.on_step:
            self.on_step(outcome)

    def _ok(
        self, m: QdrantMigration, direction: Direction, took: float, ctx: MigrationContext, at: str
    ) -> None:
        detail = {"from": m.old, "to": m.new, **ctx.report}
        outcome = QdrantStepResult(
            m.version, m.collection, direction, StepStatus.OK, took, at, detail
        )
        self._record(m, outcome)

    def _fail(
        self,
        m: QdrantMigration,
        direction: Direction,
        exc: Exception,
        took: float,
        ctx: MigrationContext,
        phase: str,
    ) -> None:
        if isinstance(exc, NotImplementedError) and direction is Direction.DOWN:
            error = f"irreversible: {first_line(exc)}"
        else:
            error = f"{type(exc).__name__}: {first_line(exc)}"
        at = self.store.aliases().get(m.collection, "(no alias)")
        detail = {"from": m.old, "to": m.new, "phase": phase, **ctx.report}
        outcome = QdrantStepResult(
            m.version, m.collection, direction, StepStatus.FAILED, took, at, detail, error
        )
        self._record(m, outcome)
        now = _status(self.store, self.migrations).version
        self.result.after = now
        self.ledger.finish_release(
            self.result.release_id,
            Outcome.FAILED,
            {"store": "qdrant", "failed_version": m.version, "error": error},
            qdrant_after=now,
        )
        resumable = phase == "copy" and self.store.exists(m.new)
        kept = f"; {m.new} is kept and the next 'up' resumes the copy" if resumable else ""
        raise MigrationFailed(
            f"Qdrant migration {m.version} failed: {error}; alias {m.collection} still points"
            f" at {at}{kept} (ledger release {self.result.release_id})"
        ) from exc


@contextmanager
def _session(
    settings: Settings, direction: Direction, store: QdrantStore | None
) -> Iterator[tuple[QdrantStore, Ledger, HeldLock]]:
    url = settings.postgres_url()
    purpose = f"qdrant migrate {direction}"
    with (
        service_lock(settings, purpose) as held,
        Ledger.open(url) as ledger,
        using(settings, store) as st,
    ):
        yield st, ledger, held


def _migrate(
    settings: Settings,
    direction: Direction,
    choose: Callable[[QdrantStatus], list[QdrantMigration]],
    store: QdrantStore | None,
    on_step: QdrantStepCallback | None,
) -> QdrantMigrateResult:
    migrations = load_migrations(settings)
    with _session(settings, direction, store) as (st, ledger, held):
        now = _status(st, migrations)
        path = choose(now)
        blocking = [
            s.problem
            for s in now.collections
            if s.problem and any(m.collection == s.collection for m in path)
        ]
        if blocking:
            raise StateError(blocking[0])
        release_id = ledger.start_release(
            settings.service,
            "migrate",
            performer(),
            git_sha=git_sha(settings.root),
            qdrant_before=now.version,
        )
        result = QdrantMigrateResult(release_id, direction, now.version, lock_wait_s=held.waited)
        ledger.record_event(
            release_id, "lock", StepStatus.OK, held.waited, {"service": settings.service}
        )
        runner = _Runner(settings, st, ledger, result, on_step, held, migrations)
        for m in path:
            runner.check_lock()
            runner.up(m) if direction is Direction.UP else runner.down(m)
        result.after = _status(st, migrations).version
        ledger.finish_release(
            release_id,
            Outcome.SUCCEEDED,
            {"store": "qdrant", "direction": str(direction), "versions": [m.version for m in path]},
            qdrant_after=result.after,
        )
        return result


def _known(migrations: list[QdrantMigration], version: str) -> str:
    if version == BASE or any(m.version == version for m in migrations):
        return version
    raise ConfigError(f"unknown Qdrant migration version {version!r}")


def up(
    settings: Settings,
    to: str | None = None,
    on_step: QdrantStepCallback | None = None,
    *,
    store: QdrantStore | None = None,
) -> QdrantMigrateResult:
    """Apply pending Qdrant migrations in version order, up to ``to`` (default: all).

    Holds the release lock (Postgres), records a ``migrate`` release with
    ``qdrant_before``/``qdrant_after`` and one event per migration. A migration that fails
    (or fails verification) raises :class:`MigrationFailed`; its alias has not moved.
    ``store`` lets a caller that already holds the Qdrant client pass it in.
    """
    if to is not None:
        _known(load_migrations(settings), to)

    def path(now: QdrantStatus) -> list[QdrantMigration]:
        return [m for m in now.pending if to is None or m.version <= to]

    return _migrate(settings, Direction.UP, path, store, on_step)


def down(
    settings: Settings,
    to: str,
    on_step: QdrantStepCallback | None = None,
    *,
    store: QdrantStore | None = None,
) -> QdrantMigrateResult:
    """Undo applied Qdrant migrations newer than ``to`` (a version or ``base``), newest first.

    Each moves its alias back to the previous collection (which must still exist) in one
    atomic call, after the migration's ``down(ctx)``. A ``down`` raising
    ``NotImplementedError`` is irreversible and stops there with :class:`MigrationFailed`.
    """
    _known(load_migrations(settings), to)

    def path(now: QdrantStatus) -> list[QdrantMigration]:
        return [m for m in reversed(now.applied) if to == BASE or m.version > to]

    return _migrate(settings, Direction.DOWN, path, store, on_step)
