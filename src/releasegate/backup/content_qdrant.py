"""The points of a Qdrant backup set compared with the live collections, by point id.

The set's points export (``qdrant scroll`` method: embedded storage) is read in batches;
each batch's ids are fetched from the live collection and compared with
:func:`~releasegate.stores.qdrant_points.compare_points`: payload equal, vectors within
float32 tolerance (cosine vectors normalised as Qdrant stores them). Then the live ids
are scrolled (no vectors, no payload) to find the points added since. Memory: one batch,
plus 8 bytes per point of the set (:class:`~releasegate.backup.content_diff.IdSet`).

A collection that the set reaches through an alias is compared with whatever that alias
points at now (after a migration, the new collection): that is what the service reads.
A ``qdrant snapshot`` set (a server) holds no readable points: its collections are
reported with a ``note`` and count as not compared.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from releasegate.backup.base import StoreBackup
from releasegate.backup.content_diff import ContentDiff, IdSet, ScopeDiff, checked_file, short
from releasegate.backup.qdrant import coverage
from releasegate.backup.qdrant_entry import METHOD_SCROLL
from releasegate.backup.qdrant_points_file import iter_points_file
from releasegate.config import Settings
from releasegate.errors import CheckFailed
from releasegate.stores.qdrant import CollectionSpec, PointData, PointId, QdrantStore, using
from releasegate.stores.qdrant_points import compare_points


def _id_bytes(point_id: PointId) -> bytes:
    return f"{type(point_id).__name__}:{point_id}".encode()


def _unit(values: Any) -> Any:
    """A dense vector scaled to length 1 (multivectors row by row)."""
    if values and isinstance(values[0], list):
        return [_unit(row) for row in values]
    norm = math.sqrt(sum(x * x for x in values))
    return [x / norm for x in values] if norm > 0 else values


def _as_stored(point: PointData, cosine: set[str]) -> PointData:
    """``point`` with its cosine vectors normalised. Qdrant compares cosine vectors by
    direction; the embedded store returns them normalised or as given, depending on
    whether the storage was reopened since."""
    if not cosine:
        return point
    if not isinstance(point.vector, dict):
        return PointData(
            point.id, _unit(point.vector) if "" in cosine else point.vector, point.payload
        )
    vectors = {
        name: _unit(value) if name in cosine and isinstance(value, list) else value
        for name, value in point.vector.items()
    }
    return PointData(point.id, vectors, point.payload)


def _plan(entry: StoreBackup) -> tuple[dict[str, CollectionSpec], dict[str, str], dict[str, str]]:
    try:
        specs = {c: CollectionSpec.from_dict(s) for c, s in entry.extra["collections"].items()}
        return specs, dict(entry.extra["aliases"]), dict(entry.extra["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckFailed(f"the Qdrant manifest entry is malformed: {exc}") from None


def _compare_collection(
    store: QdrantStore,
    path: Path,
    target: str | None,
    spec: CollectionSpec,
    scope: ScopeDiff,
    batch_size: int,
) -> None:
    seen = IdSet()
    cosine = {name for name, p in spec.vectors.items() if p.distance.value == "Cosine"}
    for batch in iter_points_file(path, batch_size):
        for point in batch:
            seen.add(_id_bytes(point.id))
        live = store.retrieve(target, [p.id for p in batch]) if target else {}
        for point in batch:
            now = live.get(point.id)
            why = compare_points(point, _as_stored(now, cosine) if now else None, spec)
            if why is None:
                scope.count("kept_unchanged")
            else:
                scope.count("missing" if why == "missing" else "changed", short(str(point.id)))
    if target is not None:
        _count_added(store, target, seen, scope, batch_size)


def _count_added(
    store: QdrantStore, target: str, seen: IdSet, scope: ScopeDiff, batch_size: int
) -> None:
    seen.freeze()
    for batch in store.scroll_batches(target, batch_size, with_vectors=False, with_payload=False):
        for point, known in zip(
            batch, seen.contains([_id_bytes(p.id) for p in batch]), strict=True
        ):
            if not known:
                scope.count("added", short(str(point.id)))


def compare_qdrant(
    settings: Settings,
    set_dir: Path,
    entry: StoreBackup,
    *,
    store: QdrantStore | None = None,
) -> ContentDiff:
    """Compare the live Qdrant with the set's points export, one scope per collection.

    The scope is named after the collection's alias when the set recorded one (``docs ->
    docs__v2`` when the alias now points elsewhere), else the collection. Per point id:
    ``kept_unchanged``, ``changed`` (payload or a vector), ``missing``, ``added``. Live
    collections that the configuration covers but the set does not hold count all their
    points as added.
    """
    started = time.monotonic()
    specs, aliases, files = _plan(entry)
    batch_size = settings.raw.qdrant.batch_size if settings.raw.qdrant else 256
    diff = ContentDiff("qdrant", set_dir.name)
    with using(settings, store) as st:
        live_aliases = st.aliases()
        live = set(st.collections())
        compared: set[str] = set()
        for collection, spec in specs.items():
            alias = min((a for a, c in aliases.items() if c == collection), default=None)
            target = live_aliases.get(alias) if alias else None
            if target is None:
                target = collection if collection in live else None
            name = alias or collection
            if alias and target and target != collection:
                name = f"{alias} -> {target}"
            scope = diff.scope(name)
            if entry.method != METHOD_SCROLL:
                scope.note = "a snapshot backup holds no readable points: not compared"
                continue
            if target is not None:
                compared.add(target)
            path = checked_file(set_dir, entry, files[collection])
            _compare_collection(st, path, target, spec, scope, batch_size)
        for collection in coverage(settings, st).collections:
            if collection not in compared and collection not in specs:
                _count_added(st, collection, IdSet(), diff.scope(collection), batch_size)
    diff.seconds = time.monotonic() - started
    return diff
