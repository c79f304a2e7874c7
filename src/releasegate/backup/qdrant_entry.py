"""A Qdrant manifest entry: its methods, the files a restore reads, checking and loading them.

Also the marks of the collections a backup never covers: scratch copies of a
verification and copies held while a restore replaces a collection.
"""

from __future__ import annotations

from pathlib import Path

from releasegate.backup.base import Difference, StoreBackup, set_file, sha256_file
from releasegate.backup.qdrant_points_file import iter_points_file
from releasegate.backup.qdrant_snapshots import upload_snapshot
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError
from releasegate.stores.qdrant import CollectionSpec, QdrantStore, first_line
from releasegate.stores.qdrant_points import Reservoir

STORE = "qdrant"
METHOD_SNAPSHOT = "qdrant snapshot"
METHOD_SCROLL = "qdrant scroll"
SUBDIR = "qdrant"
SCRATCH_MARK = "__rgverify_"
HOLD_MARK = "__rgprev_"  # a collection's copy held while a restore replaces it


def is_scratch(name: str) -> bool:
    """Whether ``name`` is a scratch or held copy (never part of a backup)."""
    return SCRATCH_MARK in name or HOLD_MARK in name


def configured_batch_size(settings: Settings) -> int:
    """``qdrant.batch_size``, or 256 without a ``[qdrant]`` section."""
    return settings.raw.qdrant.batch_size if settings.raw.qdrant else 256


def check_files(set_dir: Path, entry: StoreBackup) -> list[Difference]:
    """The entry's files that are missing or whose SHA-256 differs."""
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


def plan_entry(
    entry: StoreBackup,
) -> tuple[dict[str, CollectionSpec], dict[str, str], dict[str, str]]:
    """(collection specs, aliases, file per collection) of an entry; malformed ones fail."""
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
    _specs, _aliases, files = plan_entry(entry)
    return sorted(set(files.values()))


def load_file(
    store: QdrantStore,
    set_dir: Path,
    entry: StoreBackup,
    file_name: str,
    collection: str,
    spec: CollectionSpec,
    batch_size: int,
    sample: Reservoir | None = None,
) -> None:
    """Load one collection's file into ``collection``: a snapshot upload, or create + upsert."""
    path = set_file(set_dir, file_name)
    if entry.method == METHOD_SNAPSHOT:
        sha = next(f.sha256 for f in entry.files if f.name == file_name)
        upload_snapshot(store, path, collection, sha)
        return
    store.create_collection(collection, spec)
    for batch in iter_points_file(path, batch_size):
        store.upsert(collection, batch)
        if sample is not None:
            sample.offer(batch)
