"""What a Qdrant migration's ``up(ctx)``/``down(ctx)`` works with: create, copy, verify.

``up`` of one migration:

1. creates ``ctx.new`` with the new config (vectors, sparse vectors, payload indexes);
2. copies the points of ``ctx.old`` in batches of ``qdrant.batch_size`` (scroll + upsert),
   through the migration's ``transform``;
3. verifies: the same number of points, and ``qdrant.verify_sample`` random points of the
   old collection, transformed again, found in the new one (vector within float
   tolerance, payload equal, old payload keys kept unless ``keep_payload=False``, plus
   the migration's own ``check``).

The engine moves the alias only after that. The old collection is only ever read. A new
collection that failed verification is dropped (it is known to be wrong); one whose copy
was interrupted is kept, and the next run resumes the copy after the last point it holds
(see :meth:`MigrationContext.create_new`).

The same ``up(ctx)`` runs in three modes (:class:`Mode`): ``build`` (``migrate up``, as
above), ``expand`` (the same, and a :class:`~releasegate.stores.qdrant_points.BucketDigest`
of what was copied is kept in :attr:`MigrationContext.digest`) and ``switch`` (the new
collection exists: ``create_new`` checks it and :meth:`~MigrationContext.copy` only
catches up the points changed in ``ctx.old`` since that digest; see
:mod:`releasegate.migrations.qdrant.catchup`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from qdrant_client import QdrantClient, models

from releasegate.errors import MigrationScriptError, StateError
from releasegate.migrations.qdrant.catchup import CatchUp, reconcile
from releasegate.migrations.qdrant.loading import (
    Check,
    QdrantMigration,
    Transform,
    VerificationFailed,
)
from releasegate.stores.qdrant import (
    CollectionSpec,
    PointData,
    PointId,
    QdrantStore,
    index_schema_to_data,
)
from releasegate.stores.qdrant_points import BucketDigest, Reservoir, buckets_for, compare_points

# Verification against a collection the old version writes to may race with a write:
# after a failed attempt the changes are caught up and it is tried again, this many times.
VERIFY_ATTEMPTS = 3


class Mode(StrEnum):
    BUILD = "build"
    EXPAND = "expand"
    SWITCH = "switch"


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
        mode: Mode = Mode.BUILD,
        digest: BucketDigest | None = None,
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
        self.mode = mode
        # What ctx.new reflects of ctx.old (expand and switch): see catchup.py.
        self.digest = digest

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
        if self.mode is Mode.SWITCH:
            self._check_expanded(spec)
            return
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

    def _check_expanded(self, spec: CollectionSpec) -> None:
        """Switch: ``ctx.new`` must be the collection the expand built, never rebuilt."""
        if not self.store.exists(self.new):
            raise StateError(f"{self.new} does not exist: expand it before switching")
        existing = self.store.spec(self.new)
        have, want = existing.summary(), spec.summary()
        if any(have[k] != want[k] for k in ("vectors", "sparse_vectors")):
            raise StateError(f"{self.new} has config {have}, the migration builds {want}")
        for name, schema in spec.payload_indexes.items():
            if existing.payload_indexes.get(name) != schema:
                self.store.create_payload_index(self.new, name, schema)

    def _catch_up(self, transform: Transform | None) -> CatchUp:
        done = reconcile(
            self.store,
            self.old,
            self.new,
            transform,
            since=self.digest,
            batch_size=self.batch_size,
        )
        self.digest = done.digest
        total = self.report.setdefault("caught_up", {})
        for key, value in done.counts().items():
            total[key] = total.get(key, 0) + value
        return done

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

        An expand also records the digest of what it copied; one that resumed a copy cut
        short cannot vouch for the first part and compares every point instead. A switch
        copies nothing: it catches up the points changed since the digest.
        """
        if self._spec is None:
            raise MigrationScriptError(f"{self.migration.path.name}: copy() before create_new()")
        self.phase = "copy"
        if self.mode is Mode.SWITCH:
            return self._catch_up(transform).changed
        if self._on_copy_start:
            self._on_copy_start({"old": self.old, "new": self.new, "resume": self._resume_from})
        written = 0
        whole = self._resume_from is None and limit is None
        digest = None
        if self.mode is Mode.EXPAND and whole:
            digest = BucketDigest(buckets_for(self.store.count(self.old)))
        for batch in self.store.scroll_batches(
            self.old, self.batch_size, offset=self._resume_from, limit=limit
        ):
            out: list[PointData] = []
            for point in batch:
                if digest is not None:
                    digest.add(point)  # before the transform, which may change the point
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
        if digest is not None:
            self.digest = digest
        elif self.mode is Mode.EXPAND and limit is None:
            self._catch_up(transform)  # no digest yet: compares every point
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

        In the expand and switch modes the old version may write to ``ctx.old`` meanwhile:
        a failed attempt is followed by a catch-up, and tried again when that caught
        something up (at most ``VERIFY_ATTEMPTS`` attempts).
        """
        attempt = 1
        while True:
            try:
                self._verify_once(transform, keep_payload=keep_payload, check=check)
                return
            except VerificationFailed:
                if self.mode is Mode.BUILD or attempt >= VERIFY_ATTEMPTS:
                    raise
                if not self._catch_up(transform).changed:
                    raise
                attempt += 1

    def _verify_once(
        self, transform: Transform | None, *, keep_payload: bool, check: Check | None
    ) -> None:
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
