"""Catching a copy up with its source: the points created, changed or deleted since a digest.

Qdrant keeps no modification time, so what changed is found by content: a
:class:`~releasegate.stores.qdrant_points.BucketDigest` of the source recorded when the
copy was made (or last caught up) is compared with one of the source now. Only the points
of the buckets that differ are transformed again and compared with the target; those that
differ are written, and target points of those buckets that the source no longer has are
deleted. Without a digest every bucket counts as changed: a full compare.

The same function carries writes in both directions: old -> new with a migration's
transform (switch), new -> old with its ``down_transform`` (undo after promotion).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

from releasegate.migrations.qdrant.loading import Transform, VerificationFailed
from releasegate.stores.qdrant import PointData, PointId, QdrantStore
from releasegate.stores.qdrant_points import (
    BucketDigest,
    bucket_of,
    buckets_for,
    compare_points,
    delete_points,
)


@dataclass(frozen=True)
class CatchUp:
    """What :func:`reconcile` found and did."""

    digest: BucketDigest  # the source as the target now reflects it
    dirty_buckets: int
    created: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def changed(self) -> int:
        return self.created + self.updated + self.deleted

    def counts(self) -> dict[str, int]:
        return {
            "dirty_buckets": self.dirty_buckets,
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
        }


def apply_transform(transform: Transform | None, point: PointData) -> PointData:
    """``transform(point)`` on a copy, refusing a dropped point or a changed id."""
    if transform is None:
        return point
    result = transform(copy.deepcopy(point))
    if result is None:
        raise VerificationFailed(f"the transform dropped point {point.id!r}")
    if result.id != point.id:
        raise VerificationFailed(f"the transform changed point id {point.id!r} into {result.id!r}")
    return result


def reconcile(
    store: QdrantStore,
    source: str,
    target: str,
    transform: Transform | None,
    *,
    since: BucketDigest | None,
    batch_size: int,
) -> CatchUp:
    """Make ``target`` hold ``transform(p)`` for every point ``p`` of ``source`` again.

    Only the buckets whose points changed since ``since`` (all of them without it) are
    looked at. With ``since``: one scroll of ``source`` with vectors to find them (holding
    its ids in memory), then the points of the changed buckets fetched by id, and an id
    scroll of ``target`` for deletions. Without: every point is transformed and compared.
    """
    ids: dict[int, list[PointId]] = {}  # bucket -> the source ids seen in it (pass 1)
    if since is None:
        now = BucketDigest(buckets_for(store.count(source)))
        dirty = set(range(now.buckets))
    else:
        now = BucketDigest(since.buckets)
        for batch in store.scroll_batches(source, batch_size):
            for point in batch:
                ids.setdefault(now.add(point), []).append(point.id)
        dirty = since.dirty(now)
    if not dirty:
        return CatchUp(now, 0)
    buckets = now.buckets
    now.reset(dirty)  # refilled below from what is read (and written) now
    spec = store.spec(target)
    stale: set[PointId] = {
        p.id
        for batch in store.scroll_batches(
            target, max(batch_size, 1000), with_vectors=False, with_payload=False
        )
        for p in batch
        if bucket_of(p.id, buckets) in dirty
    }
    created = updated = 0
    # Fetching by id beats a second scroll while few buckets changed.
    scan = since is None or len(dirty) * 2 > buckets
    for chosen in _dirty_points(store, source, ids, dirty, buckets, batch_size, scan=scan):
        for point in chosen:
            now.add(point, counted=since is None)  # pass 1 counted the others already
        expected = [apply_transform(transform, p) for p in chosen]
        current = store.retrieve(target, [p.id for p in expected])
        writes = [e for e in expected if compare_points(e, current.get(e.id), spec) is not None]
        created += sum(1 for e in writes if e.id not in current)
        updated += sum(1 for e in writes if e.id in current)
        store.upsert(target, writes)
        stale.difference_update(p.id for p in chosen)
    delete_points(store, target, sorted(stale, key=str))
    return CatchUp(now, len(dirty), created, updated, len(stale))


def _dirty_points(
    store: QdrantStore,
    source: str,
    ids: dict[int, list[PointId]],
    dirty: set[int],
    buckets: int,
    batch_size: int,
    *,
    scan: bool,
) -> Iterator[list[PointData]]:
    """The source points of the dirty buckets, a batch at a time, as they are now.

    ``scan``: scroll the whole source again; else fetch the ids pass 1 saw there. A point
    created in a dirty bucket after pass 1 is then left to the next catch-up, whose
    digest will differ there.
    """
    if scan:
        for batch in store.scroll_batches(source, batch_size):
            chosen = [p for p in batch if bucket_of(p.id, buckets) in dirty]
            if chosen:
                yield chosen
        return
    wanted = [point_id for slot in sorted(dirty) for point_id in ids.get(slot, [])]
    for start in range(0, len(wanted), batch_size):
        found = store.retrieve(source, wanted[start : start + batch_size])
        if found:
            yield list(found.values())
