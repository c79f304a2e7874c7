"""Backup sets: the stores they cover, finding and listing them, checking and pruning them.

The operations behind ``releasegate backup``, as importable functions taking the resolved
:class:`~releasegate.config.Settings` (the CLI only parses and prints):

- :func:`~releasegate.backup.set_create.create` writes ``<backup.dir>/<set id>/`` with
  each store's files and a ``manifest.json`` (:mod:`releasegate.backup.manifest`), and
  records a ledger release of kind ``backup``. The set is built in a hidden
  ``.<set id>.partial`` folder and renamed into place once its manifest is written: a
  failed backup (for instance a full disk) leaves no set behind, and every set that
  :func:`list_sets` shows is complete.
- :func:`verify` checks every file's size and SHA-256 first (a damaged set is reported
  and nothing is restored), then restores each store into a scratch place and compares.
- :func:`~releasegate.backup.set_restore.restore` checks the files, reports what the
  restore would lose (:mod:`releasegate.backup.loss`), and only with ``yes`` (and
  ``while_live`` while a color serves traffic) puts the stores back under the release
  lock, all or nothing. Recorded as a ledger release of kind ``restore`` with the
  versions before and after.
- :func:`list_sets` and :func:`prune` list the sets newest first and remove the oldest.

Each set is also kept at the configured destination (:mod:`releasegate.backup.destinations`):
by default the backup folder itself, or an S3 bucket or a backup host's folder (SFTP) to
which ``create`` uploads it. Listing and pruning cover both places, and a set asked for by
id that is only at the destination is downloaded and checked first (:func:`fetch_set`,
called by :func:`resolve_set`), so that verify, restore and a rollback work on a machine
that did not create the set.

Which stores: Postgres always; Redis when ``[redis]`` is configured and its URL variable
is set; Qdrant when ``[qdrant]`` is configured. Each store module (``postgres``,
``redis``, ``qdrant`` in this package) implements the contract of
:mod:`releasegate.backup.base`; the Redis and Qdrant ones are imported only when used.
The ledger schema is never part of a set (see :mod:`releasegate.backup.postgres`).
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from releasegate.backup.base import Difference, FileEntry, set_file, sha256_file
from releasegate.backup.destinations import destination_for, set_dirs
from releasegate.backup.manifest import MANIFEST_NAME, STORE_ORDER, Manifest, is_set_id
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError, ReleasegateError

STORES: tuple[str, ...] = STORE_ORDER
PARTIAL_SUFFIX = ".partial"


# -- helpers ------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``2.0 MiB``, ``3.2 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def store_module(store: str) -> ModuleType:
    """The backup module of one store, imported on first use."""
    if store not in STORES:
        raise ConfigError(f"unknown store {store!r}: choose from {', '.join(STORES)}")
    return importlib.import_module(f"releasegate.backup.{store}")


def backup_dir(settings: Settings) -> Path:
    """``backup.dir`` resolved against the config file's folder."""
    return settings.resolve_path(settings.raw.backup.dir)


def configured_stores(settings: Settings) -> dict[str, str | None]:
    """Each store mapped to None when it can be backed up, else the reason it cannot."""
    found: dict[str, str | None] = {"postgres": None}
    redis = settings.raw.redis
    if redis is None:
        found["redis"] = f"{settings.path.name} has no [redis] section"
    elif not settings.env.get(redis.url_env):
        found["redis"] = f"environment variable {redis.url_env} (redis.url_env) is not set"
    else:
        found["redis"] = None
    found["qdrant"] = (
        None if settings.raw.qdrant is not None else f"{settings.path.name} has no [qdrant] section"
    )
    return found


def select_stores(settings: Settings, stores: Sequence[str] | None) -> list[str]:
    """The stores to back up: the asked ones (each must be configured), else all configured."""
    available = configured_stores(settings)
    if not stores:
        return [s for s in STORES if available[s] is None]
    chosen: list[str] = []
    for name in stores:
        store_module_name_check(name)
        if (why := available[name]) is not None:
            raise ConfigError(f"cannot back up {name}: {why}")
        if name not in chosen:
            chosen.append(name)
    return [s for s in STORES if s in chosen]


def store_module_name_check(name: str) -> None:
    if name not in STORES:
        raise ConfigError(f"unknown store {name!r}: choose from {', '.join(STORES)}")


def dir_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for item in path.rglob("*"):
        with contextlib.suppress(OSError):
            if item.is_file():
                total += item.stat().st_size
    return total


def ledger_versions(versions: dict[str, str | None], suffix: str) -> dict[str, str | None]:
    """The ledger's ``<store>_<suffix>`` version columns of a versions dict."""
    return {f"{k}_{suffix}": v for k, v in versions.items() if k in ("alembic", "redis", "qdrant")}


# -- finding sets -------------------------------------------------------------------------


@dataclass
class BackupSet:
    """One set: its manifest (or why it cannot be read), and where its copies are.

    ``path`` is its folder in ``backup.dir``, which exists only when ``local``; a set only
    at the destination is fetched there when it is used (:func:`fetch_set`).
    """

    set_id: str
    path: Path
    manifest: Manifest | None
    problem: str | None = None
    local: bool = True
    at_destination: bool = True

    @property
    def size(self) -> int:
        return self.manifest.total_bytes if self.manifest else dir_size(self.path)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "set_id": self.set_id,
            "path": str(self.path),
            "local": self.local,
            "at_destination": self.at_destination,
            "bytes": self.size,
            "created_at": m.created_at if m else None,
            "service": m.service if m else None,
            "stores": m.store_names if m else [],
            "versions": dict(m.versions) if m else {},
            "performer": m.performer if m else None,
            "problem": self.problem,
        }


def list_sets(settings: Settings) -> list[BackupSet]:
    """Every backup set in ``backup.dir`` or at the destination, newest first.

    Unreadable ones carry a ``problem``; a set only at the destination is described by its
    manifest there, without being downloaded.
    """
    root = backup_dir(settings)
    local = {p.name for p in set_dirs(root)}
    destination = destination_for(settings)
    stored = set(destination.list_sets())
    found: list[BackupSet] = []
    for set_id in sorted(local | stored, reverse=True):
        item = BackupSet(set_id, root / set_id, None, None, set_id in local, set_id in stored)
        try:
            item.manifest = (
                Manifest.read(item.path) if item.local else destination.read_manifest(set_id)
            )
        except ReleasegateError as exc:
            item.problem = str(exc)
        found.append(item)
    return found


def fetch_set(settings: Settings, set_id: str) -> Path:
    """The folder of set ``set_id`` in ``backup.dir``, downloaded from the destination first
    when it is only there.

    The download goes to a hidden ``.partial`` folder and is put in place only when every
    file has its recorded size and SHA-256: a damaged copy raises :class:`CheckFailed`
    and leaves nothing behind.
    """
    root = backup_dir(settings)
    path = root / set_id
    if path.is_dir():
        return path
    destination = destination_for(settings)
    if set_id not in destination.list_sets():
        where = destination.describe()
        also = f", nor at {where}" if where != str(root) else ""
        raise ConfigError(f"no backup set {set_id!r}: not in {root}{also}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{set_id}.", suffix=PARTIAL_SUFFIX, dir=root))
    except OSError as exc:
        raise ConfigError(f"cannot create the backup folder {root}: {exc.strerror}") from None
    try:
        destination.get_set(set_id, partial)
        manifest = Manifest.read(partial)
        damaged = check_files(partial, manifest, manifest.store_names)
        if manifest.set_id != set_id:
            damaged.insert(0, Difference("-", "manifest set_id", set_id, manifest.set_id))
        if damaged:
            first = damaged[0]
            raise CheckFailed(
                f"backup set {set_id} from {destination.describe()} is damaged, nothing kept:"
                f" {first.store} {first.item}: expected {first.expected}, found {first.actual}"
            )
        try:
            partial.rename(path)
        except OSError:
            if not path.is_dir():  # else another run fetched it first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def resolve_set(settings: Settings, ref: str) -> Path:
    """The folder of a set named by its id, a path (folder or manifest.json), or ``latest``.

    A set id (or ``latest``) that is only at the destination is fetched (:func:`fetch_set`).
    """
    root = backup_dir(settings)
    if ref == "latest":
        for candidate in list_sets(settings):
            if candidate.manifest is not None:
                return fetch_set(settings, candidate.set_id)
        raise ConfigError(
            f"no backup sets in {destination_for(settings).describe()}:"
            " create one with 'releasegate backup create'"
        )
    if is_set_id(ref) and (root / ref).is_dir():
        return root / ref
    path = Path(ref).expanduser()
    if path.is_file() and path.name == MANIFEST_NAME:
        return path.parent.resolve()
    if path.is_dir():
        return path.resolve()
    if is_set_id(ref):
        return fetch_set(settings, ref)
    raise ConfigError(f"no backup set {ref!r}: not a set id in {root}, nor a folder")


def open_set(settings: Settings, ref: str) -> tuple[Path, Manifest]:
    """Resolve ``ref`` and read its manifest; a set of another service is refused."""
    path = resolve_set(settings, ref)
    manifest = Manifest.read(path)
    if manifest.service != settings.service:
        raise ConfigError(
            f"backup set {manifest.set_id} belongs to service {manifest.service!r},"
            f" not {settings.service!r}"
        )
    return path, manifest


# -- checksums ----------------------------------------------------------------------------


def check_file(set_dir: Path, store: str, entry: FileEntry) -> Difference | None:
    """None when the file has its recorded size and SHA-256, else what is wrong.

    The file must lie inside the set folder (:func:`~releasegate.backup.base.set_file`): a
    link leading out of it is reported without being read.
    """
    item = f"file {entry.name}"
    try:
        path = set_file(set_dir, entry.name)
    except CheckFailed:
        return Difference(store, item, "a file of the set folder", "a link out of the folder")
    if not path.is_file():
        return Difference(store, item, f"{entry.size} bytes", "missing")
    size = path.stat().st_size
    if size != entry.size:
        return Difference(store, item, f"{entry.size} bytes", f"{size} bytes")
    digest = sha256_file(path)
    if digest != entry.sha256:
        return Difference(store, item, f"sha256 {entry.sha256[:12]}…", f"sha256 {digest[:12]}…")
    return None


def check_files(set_dir: Path, manifest: Manifest, stores: Sequence[str]) -> list[Difference]:
    """Size and SHA-256 of every file of the given stores; the damaged ones.

    A store whose entry lacks a file its restore reads (``required_files`` of its module)
    is damaged too: every file a restore reads is one that was checksummed here.
    """
    damaged: list[Difference] = []
    for entry in manifest.stores:
        if entry.store not in stores:
            continue
        listed = {f.name for f in entry.files}
        try:
            required: list[str] = store_module(entry.store).required_files(entry)
        except CheckFailed as exc:
            damaged.append(Difference(entry.store, "manifest entry", "usable", str(exc)))
            continue
        for name in required:
            if name not in listed:
                damaged.append(Difference(entry.store, f"file {name}", "listed", "not listed"))
        for file in entry.files:
            if (problem := check_file(set_dir, entry.store, file)) is not None:
                damaged.append(problem)
    return damaged


# -- verify -------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """What :func:`verify` found: damaged files, differences per store."""

    set_id: str
    path: Path
    damaged: list[Difference] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    # store -> "ok", "N difference(s)" or "not checked: ..."
    stores: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.differences

    def to_dict(self) -> dict[str, Any]:
        def rows(items: list[Difference]) -> list[dict[str, Any]]:
            return [
                {"store": d.store, "item": d.item, "expected": d.expected, "actual": d.actual}
                for d in items
            ]

        return {
            "set_id": self.set_id,
            "path": str(self.path),
            "ok": self.ok,
            "stores": dict(self.stores),
            "damaged": rows(self.damaged),
            "differences": rows(self.differences),
            "seconds": round(self.seconds, 3),
        }


def verify(
    settings: Settings, set_ref: str, *, stores: Sequence[str] | None = None
) -> VerifyResult:
    """Check a set's files, then restore each store into a scratch place and compare.

    A damaged file (size or SHA-256) is reported and no store is restored at all. Each
    store's ``verify`` works on a scratch database, logical DB or collection and removes
    it afterwards; the live stores are not touched. ``result.ok`` is the verdict.
    """
    started = time.monotonic()
    path, manifest = open_set(settings, set_ref)
    chosen = chosen_stores(manifest, stores)
    result = VerifyResult(manifest.set_id, path)
    result.damaged = check_files(path, manifest, chosen)
    if result.damaged:
        hit = {d.store for d in result.damaged}
        for store in chosen:
            result.stores[store] = (
                "damaged files" if store in hit else "not checked: the set is damaged"
            )
        result.seconds = time.monotonic() - started
        return result
    for store in chosen:
        entry = manifest.store(store)
        assert entry is not None
        found: list[Difference] = store_module(store).verify(settings, path, entry)
        result.differences += found
        result.stores[store] = "ok" if not found else f"{len(found)} difference(s)"
    result.seconds = time.monotonic() - started
    return result


def chosen_stores(manifest: Manifest, stores: Sequence[str] | None) -> list[str]:
    """The set's stores named in ``stores`` (each must be in the set), else all of them."""
    if not stores:
        return manifest.store_names
    for name in stores:
        store_module_name_check(name)
        if manifest.store(name) is None:
            raise ConfigError(
                f"backup set {manifest.set_id} holds no {name} backup"
                f" (it has {', '.join(manifest.store_names)})"
            )
    return [s for s in manifest.store_names if s in stores]


# -- prune --------------------------------------------------------------------------------


def prune(settings: Settings, keep: int | None = None) -> list[BackupSet]:
    """Remove the oldest sets beyond the newest ``keep`` (default ``backup.keep``), both at
    the destination and in ``backup.dir``.

    Sets are ordered by their id, that is by age. Returns the removed sets.
    """
    keep = settings.raw.backup.keep if keep is None else keep
    if keep < 1:
        raise ConfigError("prune must keep at least one backup set")
    removed = list_sets(settings)[keep:]
    destination = destination_for(settings)
    for item in removed:
        if item.at_destination:
            destination.delete_set(item.set_id)
        if item.path.exists():
            shutil.rmtree(item.path)
    return removed
