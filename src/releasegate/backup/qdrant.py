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

The points file (``format_version`` 1) is gzip-compressed JSON lines:

1. a header ``{"format": "releasegate.qdrant.points", "format_version": 1, "collection": NAME}``;
2. one line per point, ``{"id": ID, "dense": {VECTOR: F32}, "multi": {VECTOR: [F32, ...]},
   "sparse": {VECTOR: {"indices": [...], "values": F32}}, "payload": {...}}``, where ``F32``
   is the base64 of the little-endian float32 values (what Qdrant stores, so exact and
   compact), the unnamed vector has the name ``""``, and empty groups are left out;
3. a trailer ``{"end": true, "points": N}``: a file without it was cut short.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from releasegate.backup.base import (
    CHUNK,
    Difference,
    FileEntry,
    StoreBackup,
    set_file,
    sha256_file,
)
from releasegate.config import Settings
from releasegate.errors import (
    CheckFailed,
    ConfigError,
    InfraError,
    ReleasegateError,
    RollbackFailed,
    StateError,
)
from releasegate.migrations.qdrant import applied_version
from releasegate.stores.qdrant import (
    CollectionSpec,
    PointData,
    QdrantStore,
    connect_settings,
    first_line,
    using,
)
from releasegate.stores.qdrant_points import (
    Reservoir,
    compare_points,
    decode_point,
    encode_point,
)

STORE = "qdrant"
METHOD_SNAPSHOT = "qdrant snapshot"
METHOD_SCROLL = "qdrant scroll"
FORMAT = "releasegate.qdrant.points"
FORMAT_VERSION = 1
SUBDIR = "qdrant"
SCRATCH_MARK = "__rgverify_"
HOLD_MARK = "__rgprev_"  # a collection's copy held while a restore replaces it
_GZIP_LEVEL = 4


# -- the points file ---------------------------------------------------------------------


class PointsWriter:
    """Writes a points file batch by batch; the trailer is written by :meth:`close`."""

    def __init__(self, path: Path, collection: str) -> None:
        self.path = path
        self.points = 0
        self._file: gzip.GzipFile = gzip.GzipFile(path, "wb", compresslevel=_GZIP_LEVEL)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "collection": collection}
        self._line(header)

    def _line(self, data: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n")

    def write(self, batch: Iterable[PointData]) -> None:
        for point in batch:
            self._line(encode_point(point))
            self.points += 1

    def close(self) -> None:
        """Write the trailer and close; a file left without it reads as cut short."""
        self._line({"end": True, "points": self.points})
        self._file.close()

    def __enter__(self) -> PointsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def write_points_file(path: Path, collection: str, batches: Iterable[Iterable[PointData]]) -> int:
    """Write a whole points file from batches of points; returns the number of points."""
    with PointsWriter(path, collection) as writer:
        for batch in batches:
            writer.write(batch)
    return writer.points


def read_points_header(path: Path) -> dict[str, Any]:
    """The header of a points file; :class:`CheckFailed` if it is not one."""
    try:
        with gzip.open(path, "rb") as handle:
            header = json.loads(handle.readline())
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise CheckFailed(f"{path.name} is not a readable points file: {first_line(exc)}") from None
    _check_header(path, header)
    return dict(header)


def _check_header(path: Path, header: Any) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckFailed(f"{path.name} is not a releasegate Qdrant points file")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckFailed(
            f"{path.name} has points format version {header.get('format_version')};"
            f" this releasegate reads version {FORMAT_VERSION}"
        )


def iter_points_file(path: Path, batch_size: int = 256) -> Iterator[list[PointData]]:
    """The points of a points file in batches, checking its header, lines and trailer.

    Raises :class:`CheckFailed` on a damaged file, at the point where the damage is found
    (a restore checks checksums first, so that it never starts on a damaged file).
    """
    batch: list[PointData] = []
    seen = 0
    line_no = 0
    try:
        with gzip.open(path, "rb") as handle:
            line_no = 1
            _check_header(path, json.loads(handle.readline()))
            for raw in handle:
                line_no += 1
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("a line that is not an object")
                if data.get("end") is True:
                    if data.get("points") != seen:
                        raise ValueError(
                            f"the trailer counts {data.get('points')} points, the file has {seen}"
                        )
                    if handle.readline():
                        raise ValueError("data after the trailer")
                    if batch:
                        yield batch
                    return
                batch.append(decode_point(data))
                seen += 1
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
    except CheckFailed:
        raise
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as exc:
        raise CheckFailed(f"{path.name} is damaged (line {line_no}): {first_line(exc)}") from None
    raise CheckFailed(f"{path.name} is cut short: no trailer after {seen} points")


# -- what a backup covers ----------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """The physical collections a backup covers, the aliases among them, names not found."""

    collections: list[str]
    aliases: dict[str, str]
    missing: list[str]


def is_scratch(name: str) -> bool:
    return SCRATCH_MARK in name or HOLD_MARK in name


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


def _batch_size(settings: Settings) -> int:
    return settings.raw.qdrant.batch_size if settings.raw.qdrant else 256


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
                    path, name, st.scroll_batches(name, _batch_size(settings))
                )
            else:
                path = out / f"{_file_stem(name)}.snapshot"
                points = st.count(name)
                snapshots[name] = _download_snapshot(st, name, path)
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
            "batch_size": _batch_size(settings),
        }
        if st.embedded:
            entry.extra |= {"format": FORMAT, "format_version": FORMAT_VERSION}
        else:
            entry.extra["snapshots"] = snapshots
        return entry


# -- the snapshot API (server) -------------------------------------------------------------


def _http(store: QdrantStore) -> httpx.Client:
    if store.url is None:
        raise StateError(
            "the snapshot method needs a Qdrant server (set the qdrant.url_env variable)"
        )
    headers = {"api-key": store.api_key} if store.api_key else {}
    timeout = httpx.Timeout(store.timeout, read=max(store.timeout, 300.0))
    return httpx.Client(base_url=store.url.rstrip("/"), headers=headers, timeout=timeout)


def _download_snapshot(store: QdrantStore, collection: str, path: Path) -> dict[str, Any]:
    """Create a snapshot of ``collection``, stream it to ``path``, delete it on the server."""
    try:
        snapshot = store.client.create_snapshot(collection_name=collection, wait=True)
    except Exception as exc:
        raise store.fail(f"creating a snapshot of {collection}", exc) from None
    if snapshot is None:
        raise InfraError(f"Qdrant ({store.target}) returned no snapshot for {collection}")
    digest = hashlib.sha256()
    try:
        with (
            _http(store) as http,
            http.stream(
                "GET", f"/collections/{quote(collection)}/snapshots/{quote(snapshot.name)}"
            ) as response,
        ):
            if response.status_code != 200:
                raise InfraError(
                    f"Qdrant ({store.target}): downloading snapshot {snapshot.name} of"
                    f" {collection} answered HTTP {response.status_code}"
                )
            with path.open("wb") as handle:
                for chunk in response.iter_bytes(CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
    except httpx.HTTPError as exc:
        raise store.fail(f"downloading snapshot {snapshot.name} of {collection}", exc) from None
    finally:
        try:
            store.client.delete_snapshot(collection, snapshot.name, wait=True)
        except Exception as exc:
            raise store.fail(f"deleting snapshot {snapshot.name} of {collection}", exc) from None
    checksum = digest.hexdigest()
    if snapshot.checksum and snapshot.checksum != checksum:
        raise CheckFailed(
            f"snapshot {snapshot.name} of {collection}: Qdrant reports sha256 {snapshot.checksum},"
            f" the download has {checksum}"
        )
    return {"name": snapshot.name, "size": path.stat().st_size, "sha256": checksum}


def _upload_snapshot(store: QdrantStore, path: Path, collection: str, sha256: str) -> None:
    """Recover ``collection`` (created or overwritten) from a snapshot file."""
    try:
        with _http(store) as http, path.open("rb") as handle:
            response = http.post(
                f"/collections/{quote(collection)}/snapshots/upload",
                params={"wait": "true", "priority": "snapshot", "checksum": sha256},
                files={"snapshot": (path.name, handle, "application/octet-stream")},
                timeout=httpx.Timeout(store.timeout, read=None, write=None),
            )
    except httpx.HTTPError as exc:
        raise store.fail(f"uploading {path.name} into {collection}", exc) from None
    if response.status_code != 200:
        raise InfraError(
            f"Qdrant ({store.target}): uploading {path.name} into {collection} answered"
            f" HTTP {response.status_code}: {response.text[:200]}"
        )


# -- restore -------------------------------------------------------------------------------


def _check_files(set_dir: Path, entry: StoreBackup) -> list[Difference]:
    problems = []
    for f in entry.files:
        path = set_file(set_dir, f.name)
        if not path.is_file():
            problems.append(Difference(STORE, f"file {f.name}", "present", "missing"))
            continue
        actual = sha256_file(path)
        if actual != f.sha256:
            problems.append(Difference(STORE, f"file {f.name} sha256", f.sha256, actual))
    return problems


def _plan(entry: StoreBackup) -> tuple[dict[str, CollectionSpec], dict[str, str], dict[str, str]]:
    if entry.store != STORE or entry.method not in (METHOD_SCROLL, METHOD_SNAPSHOT):
        raise ConfigError(f"not a Qdrant backup entry: {entry.store} / {entry.method}")
    try:
        specs = {c: CollectionSpec.from_dict(s) for c, s in entry.extra["collections"].items()}
        aliases, files = dict(entry.extra["aliases"]), dict(entry.extra["files"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckFailed(f"the Qdrant manifest entry is malformed: {first_line(exc)}") from None
    listed = {f.name for f in entry.files}
    for collection in specs:
        if files.get(collection) not in listed:
            raise CheckFailed(
                f"the Qdrant manifest entry is malformed: the file of {collection}"
                f" ({files.get(collection)}) is not among its files"
            )
    return specs, aliases, files


def required_files(entry: StoreBackup) -> list[str]:
    """The manifest files a restore of ``entry`` reads: one per collection."""
    _specs, _aliases, files = _plan(entry)
    return sorted(set(files.values()))


def _load_file(
    store: QdrantStore,
    set_dir: Path,
    entry: StoreBackup,
    file_name: str,
    collection: str,
    spec: CollectionSpec,
    batch_size: int,
    sample: Reservoir | None = None,
) -> None:
    path = set_file(set_dir, file_name)
    if entry.method == METHOD_SNAPSHOT:
        sha = next(f.sha256 for f in entry.files if f.name == file_name)
        _upload_snapshot(store, path, collection, sha)
        return
    store.create_collection(collection, spec)
    for batch in iter_points_file(path, batch_size):
        store.upsert(collection, batch)
        if sample is not None:
            sample.offer(batch)


def _copy_collection(store: QdrantStore, source: str, target: str, batch_size: int) -> None:
    """Create ``target`` like ``source`` and copy every point; :class:`CheckFailed` if the
    copy does not hold as many points."""
    store.create_collection(target, store.spec(source))
    for batch in store.scroll_batches(source, batch_size):
        store.upsert(target, batch)
    if (want := store.count(source)) != (got := store.count(target)):
        raise CheckFailed(f"copying {source} into {target} gave {got} points, not {want}")


class StagedRestore:
    """A Qdrant restore made ready without changing what the service reads.

    Qdrant cannot rename a collection, and the restored collections keep their names (the
    migration version is read from them), so the set cannot be loaded beside the live
    collections. Building this object instead checks everything it can first: the files'
    checksums and, for points files, every point decodes and the trailer counts them;
    then it copies each collection the restore replaces into a held collection
    ``<name>__rgprev_<hex>``. :meth:`commit` drops those collections, loads the set and
    sets its aliases; when that fails it puts the held copies back itself. :meth:`undo`
    does the same after a commit, :meth:`finish` drops the held copies. A failed undo is
    :class:`RollbackFailed`, naming the held copies.
    """

    store = STORE

    def __init__(
        self,
        settings: Settings,
        set_dir: Path,
        entry: StoreBackup,
        *,
        force: bool,
        store: QdrantStore | None = None,
    ):
        self.set_dir, self.entry = set_dir, entry
        self.specs, self.aliases, self.files = _plan(entry)
        damaged = _check_files(set_dir, entry)
        if damaged:
            raise CheckFailed(
                f"the Qdrant backup is damaged, nothing restored: {damaged[0].describe()}"
                + (f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else "")
            )
        self.batch_size = _batch_size(settings)
        if entry.method == METHOD_SCROLL:
            for collection in self.specs:
                path = set_file(set_dir, self.files[collection])
                for _batch in iter_points_file(path, self.batch_size):
                    pass
        self.owned = store is None
        self.st = connect_settings(settings) if store is None else store
        self.held: dict[str, str] = {}
        self.finished = False
        try:
            self._hold(force)
        except BaseException:
            self.abort()
            raise

    def _hold(self, force: bool) -> None:
        st = self.st
        live = set(st.collections())
        self.aliases_before = st.aliases()
        occupied = {c: st.count(c) for c in self.specs if c in live}
        taken = sorted(a for a in self.aliases if a in live)
        non_empty = {c: n for c, n in occupied.items() if n > 0}
        if (non_empty or taken) and not force:
            what = [f"{c} has {n} points" for c, n in sorted(non_empty.items())]
            what += [f"alias {a} is the name of a collection" for a in taken]
            raise StateError(
                f"Qdrant ({st.target}) is not empty: {', '.join(what)};"
                " restore with force to replace"
            )
        token = uuid.uuid4().hex[:8]
        for name in sorted({*occupied, *taken}):
            self.held[name] = f"{name}{HOLD_MARK}{token}"
            _copy_collection(st, name, self.held[name], self.batch_size)

    def commit(self) -> dict[str, Any]:
        """Replace the collections and aliases; on failure they are put back as they were."""
        restored = {}
        try:
            for name in self.held:
                self.st.drop_collection(name)
            for collection, spec in self.specs.items():
                _load_file(
                    self.st,
                    self.set_dir,
                    self.entry,
                    self.files[collection],
                    collection,
                    spec,
                    self.batch_size,
                )
                restored[collection] = self.st.count(collection)
            self.st.set_aliases(self.aliases)
        except ReleasegateError as exc:
            self._put_back()
            raise type(exc)(f"{exc}; the previous collections were put back") from None
        except BaseException:
            self._put_back()
            raise
        return {"collections": restored, "aliases": self.aliases}

    def _put_back(self) -> None:
        """Drop what the restore created, copy each held collection back under its name,
        point the aliases as before, drop the held copies."""
        st = self.st
        try:
            for name in self.specs:
                if st.exists(name):
                    st.drop_collection(name)
            for name, hold in self.held.items():
                if st.exists(name):
                    st.drop_collection(name)
                _copy_collection(st, hold, name, self.batch_size)
            for alias in set(st.aliases()) - set(self.aliases_before):
                st.delete_alias(alias)
            live = set(st.collections())
            st.set_aliases({a: c for a, c in self.aliases_before.items() if c in live})
        except ReleasegateError as exc:
            held = ", ".join(self.held.values()) or "no collection"
            self.finished = True  # the held copies are all that is left: keep them
            if self.owned:
                self.st.close()
            raise RollbackFailed(
                f"putting the previous Qdrant collections back failed ({exc});"
                f" they are kept in {held}"
            ) from None
        self.finish()

    def abort(self) -> None:
        """Drop the held copies: the live collections were never touched."""
        self.finish()

    def undo(self) -> None:
        """Put the collections and aliases back as they were before :meth:`commit`."""
        self._put_back()

    def finish(self) -> None:
        """Drop the held copies (and close a store opened here); once only."""
        if self.finished:
            return
        self.finished = True
        try:
            for hold in self.held.values():
                if self.st.exists(hold):
                    self.st.drop_collection(hold)
        finally:
            if self.owned:
                self.st.close()


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
    specs, aliases, files = _plan(entry)
    differences = _check_files(set_dir, entry)
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
                _load_file(
                    st,
                    set_dir,
                    entry,
                    files[collection],
                    scratch,
                    spec,
                    _batch_size(settings),
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
