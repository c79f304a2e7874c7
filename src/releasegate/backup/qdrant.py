"""Qdrant restore points: snapshots on a server, a streamed scroll export when embedded.

The four operations of :mod:`releasegate.backup.base` (``backup``, ``restore``,
``verify``, ``counts``). Each takes an optional ``store=``: a command that already holds
a :class:`~releasegate.stores.qdrant.QdrantStore` passes it (an embedded storage folder
admits one client at a time); without it the function opens and closes its own.

What a backup covers: the collections named by ``qdrant.collections`` (aliases resolve to
the collection they point at; aliases among the names are recorded), or every collection
and alias when that list is empty. Scratch collections of :func:`verify` are never covered.

Methods:

- ``qdrant snapshot`` (a server): for each collection, create a snapshot, stream it over
  HTTP into ``<set>/qdrant/<collection>.snapshot`` while hashing it, compare with the
  checksum Qdrant reports, and delete the remote snapshot. Restored by uploading it
  (``POST /collections/{name}/snapshots/upload?priority=snapshot``).
- ``qdrant scroll`` (embedded): the points are scrolled in batches of ``qdrant.batch_size``
  and written to ``<set>/qdrant/<collection>.jsonl.gz``, so memory does not grow with
  the collection. Restored by creating the collection and upserting in batches; works on a
  server too.

Both record each collection's :class:`~releasegate.stores.qdrant.CollectionSpec` (vectors,
sparse vectors, payload indexes) and the alias map in the entry's ``extra``: snapshots do
not carry aliases, so restore creates them again.

The points file of the scroll method is described in
:mod:`releasegate.backup.qdrant_points_file`; snapshots travel through
:mod:`releasegate.backup.qdrant_snapshots`; the restore is
:mod:`releasegate.backup.qdrant_restore`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from releasegate.backup.base import Difference, FileEntry, StoreBackup
from releasegate.backup.qdrant_entry import (
    METHOD_SCROLL,
    METHOD_SNAPSHOT,
    SCRATCH_MARK,
    STORE,
    SUBDIR,
    check_files,
    configured_batch_size,
    is_scratch,
    load_file,
    plan_entry,
)
from releasegate.backup.qdrant_entry import required_files as required_files  # the contract
from releasegate.backup.qdrant_points_file import FORMAT, FORMAT_VERSION, write_points_file
from releasegate.backup.qdrant_restore import StagedRestore
from releasegate.backup.qdrant_snapshots import download_snapshot
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError, StateError
from releasegate.migrations.qdrant import applied_version
from releasegate.stores.qdrant import CollectionSpec, PointData, QdrantStore, using
from releasegate.stores.qdrant_points import Reservoir, compare_points

# -- what a backup covers ----------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """The physical collections a backup covers, the aliases among them, names not found."""

    collections: list[str]
    aliases: dict[str, str]
    missing: list[str]


def coverage(settings: Settings, store: QdrantStore) -> Coverage:
    """Resolve ``qdrant.collections`` (or everything) against the live collections."""
    section = settings.raw.qdrant
    names = list(section.collections) if section else []
    live = [c for c in store.collections() if not is_scratch(c)]
    alias_map = store.aliases()
    if not names:
        return Coverage(live, {a: c for a, c in alias_map.items() if c in live}, [])
    collections: list[str] = []
    aliases: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        if name in alias_map:
            aliases[name] = alias_map[name]
            target = alias_map[name]
        elif name in live:
            target = name
        else:
            missing.append(name)
            continue
        if target not in collections:
            collections.append(target)
    return Coverage(sorted(collections), aliases, missing)


def _collection_counts(store: QdrantStore, name: str) -> dict[str, Any]:
    return {"points": store.count(name), **store.spec(name).summary()}


def counts(settings: Settings, *, store: QdrantStore | None = None) -> dict[str, Any]:
    """Points per collection, vector config, payload indexes and the alias map.

    ``{"collections": {NAME: {"points", "vectors": {VECTOR: {"size", "distance"}},
    "sparse_vectors", "payload_indexes": {FIELD: TYPE}}}, "aliases": {ALIAS: NAME},
    "missing": [...]}``, the unnamed vector being ``""``.
    """
    with using(settings, store) as st:
        cov = coverage(settings, st)
        return {
            "collections": {c: _collection_counts(st, c) for c in cov.collections},
            "aliases": dict(cov.aliases),
            "missing": list(cov.missing),
        }


def _file_stem(collection: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", collection)


def _versions(settings: Settings, store: QdrantStore) -> dict[str, Any]:
    try:
        return {"qdrant_migrations": applied_version(settings, store)}
    except (ConfigError, StateError):
        return {}


def _tools(store: QdrantStore) -> dict[str, str]:
    tools = {"qdrant-client": package_version("qdrant-client")}
    if not store.embedded:
        try:
            tools["qdrant"] = str(store.client.info().version)
        except Exception:  # older servers answer / without a version model
            tools["qdrant"] = "unknown"
    return tools


# -- backup --------------------------------------------------------------------------------


def backup(settings: Settings, set_dir: Path, *, store: QdrantStore | None = None) -> StoreBackup:
    """Write the covered collections into ``set_dir/qdrant/`` and describe them.

    A server gets the snapshot method, an embedded store the scroll export (see the
    module docstring). Names in ``qdrant.collections`` that do not exist are listed under
    ``counts["missing"]``.
    """
    with using(settings, store) as st:
        cov = coverage(settings, st)
        out = set_dir / SUBDIR
        out.mkdir(parents=True, exist_ok=True)
        method = METHOD_SCROLL if st.embedded else METHOD_SNAPSHOT
        entry = StoreBackup(store=STORE, method=method, tools=_tools(st))
        entry.versions = _versions(settings, st)
        specs: dict[str, Any] = {}
        files: dict[str, str] = {}
        collections: dict[str, Any] = {}
        snapshots: dict[str, Any] = {}
        for name in cov.collections:
            started = time.monotonic()
            spec = st.spec(name)
            specs[name] = spec.to_dict()
            if st.embedded:
                path = out / f"{_file_stem(name)}.jsonl.gz"
                points = write_points_file(
                    path, name, st.scroll_batches(name, configured_batch_size(settings))
                )
            else:
                path = out / f"{_file_stem(name)}.snapshot"
                points = st.count(name)
                snapshots[name] = download_snapshot(st, name, path)
            collections[name] = {"points": points, **spec.summary()}
            entry.files.append(FileEntry.of(set_dir, path))
            files[name] = entry.files[-1].name
            entry.timings[f"export {name}"] = round(time.monotonic() - started, 3)
        entry.counts = {
            "collections": collections,
            "aliases": dict(cov.aliases),
            "missing": list(cov.missing),
        }
        entry.extra = {
            "collections": specs,
            "aliases": dict(cov.aliases),
            "files": files,
            "batch_size": configured_batch_size(settings),
        }
        if st.embedded:
            entry.extra |= {"format": FORMAT, "format_version": FORMAT_VERSION}
        else:
            entry.extra["snapshots"] = snapshots
        return entry


def stage(
    settings: Settings,
    set_dir: Path,
    entry: StoreBackup,
    *,
    force: bool = False,
    store: QdrantStore | None = None,
) -> StagedRestore:
    """Check the set's Qdrant files and hold copies of what it replaces (:class:`StagedRestore`).

    Refuses (:class:`StateError`) when one of the collections exists with points, or an
    alias name is taken by a collection, unless ``force``.
    """
    return StagedRestore(settings, set_dir, entry, force=force, store=store)


def restore(
    settings: Settings,
    set_dir: Path,
    entry: StoreBackup,
    *,
    force: bool = False,
    store: QdrantStore | None = None,
) -> dict[str, Any]:
    """Put the backed-up collections and aliases back into the configured Qdrant, all or
    nothing (:func:`stage`, then commit). Returns ``{"collections": {NAME: points},
    "aliases": {ALIAS: NAME}}``."""
    staged = stage(settings, set_dir, entry, force=force, store=store)
    outcome = staged.commit()
    staged.finish()
    return outcome


# -- verify --------------------------------------------------------------------------------


def compare_sample(
    store: QdrantStore, collection: str, sample: Sequence[PointData], spec: CollectionSpec
) -> list[tuple[PointData, str]]:
    """The sampled points that ``collection`` does not hold as expected, with the reason."""
    if not sample:
        return []
    found = store.retrieve(collection, [p.id for p in sample])
    problems = []
    for point in sample:
        why = compare_points(point, found.get(point.id), spec)
        if why:
            problems.append((point, why))
    return problems


def verify(
    settings: Settings, set_dir: Path, entry: StoreBackup, *, store: QdrantStore | None = None
) -> list[Difference]:
    """Restore each collection into a scratch collection and compare; empty list = good.

    Scratch collections are named ``<collection>__rgverify_<hex>`` and deleted afterwards.
    Compared: checksums, the number of points, vectors and payload indexes, and (scroll
    method) ``qdrant.verify_sample`` points drawn at random from the file, vector within
    float tolerance and payload equal. A snapshot is opaque, so its points are compared by
    count and config only.
    """
    specs, aliases, files = plan_entry(entry)
    differences = check_files(set_dir, entry)
    damaged = {d.item.split()[1] for d in differences}
    sample_size = settings.raw.qdrant.verify_sample if settings.raw.qdrant else 32
    recorded = entry.counts.get("collections", {})
    with using(settings, store) as st:
        for collection, spec in specs.items():
            if files[collection] in damaged:
                continue
            scratch = f"{collection}{SCRATCH_MARK}{uuid.uuid4().hex[:8]}"
            sample = Reservoir(sample_size)
            try:
                load_file(
                    st,
                    set_dir,
                    entry,
                    files[collection],
                    scratch,
                    spec,
                    configured_batch_size(settings),
                    sample,
                )
                differences += _compare_restored(st, collection, scratch, spec, recorded, sample)
            except StateError as exc:  # Qdrant refused the restore
                differences.append(Difference(STORE, f"restore of {collection}", "ok", str(exc)))
            except CheckFailed as exc:  # the file is damaged
                differences.append(
                    Difference(STORE, f"file {files[collection]}", "readable", str(exc))
                )
            finally:
                if st.exists(scratch):
                    st.drop_collection(scratch)
        for alias, target in aliases.items():
            if target not in specs:
                differences.append(Difference(STORE, f"alias {alias}", target, "not in the backup"))
    return differences


def _compare_restored(
    store: QdrantStore,
    collection: str,
    scratch: str,
    spec: CollectionSpec,
    recorded: Mapping[str, Any],
    sample: Reservoir,
) -> list[Difference]:
    found: list[Difference] = []
    expected = recorded.get(collection, {}).get("points")
    actual = store.count(scratch)
    if expected != actual:
        found.append(Difference(STORE, f"points {collection}", expected, actual))
    want, got = spec.summary(), store.spec(scratch).summary()
    for key in ("vectors", "sparse_vectors", "payload_indexes"):
        if want[key] != got[key]:
            found.append(Difference(STORE, f"{key} {collection}", want[key], got[key]))
    for point, why in compare_sample(store, scratch, sample.points, spec):
        found.append(Difference(STORE, f"point {point.id} of {collection}", "as backed up", why))
    return found
