"""Backup sets: create, verify, restore, list and prune restore points of every store.

The operations behind ``releasegate backup``, as importable functions taking the resolved
:class:`~releasegate.config.Settings` (the CLI only parses and prints):

- :func:`create` writes ``<backup.dir>/<set id>/`` with each store's files and a
  ``manifest.json`` (:mod:`releasegate.backup.manifest`), and records a ledger release of
  kind ``backup``. The set is built in a hidden ``.<set id>.partial`` folder and renamed
  into place once its manifest is written: a failed backup (for instance a full disk)
  leaves no set behind, and every set that :func:`list_sets` shows is complete.
- :func:`verify` checks every file's size and SHA-256 first (a damaged set is reported
  and nothing is restored), then restores each store into a scratch place and compares.
- :func:`restore` checks the files, reports what the restore would lose
  (:mod:`releasegate.backup.loss`), and only with ``yes`` (and ``while_live`` while a
  color serves traffic) puts the stores back under the release lock, all or nothing.
  Recorded as a ledger release of kind ``restore`` with the versions before and after.
- :func:`list_sets` and :func:`prune` list the sets newest first and remove the oldest.

Which stores: Postgres always; Redis when ``[redis]`` is configured and its URL variable
is set; Qdrant when ``[qdrant]`` is configured. Each store module (``postgres``,
``redis``, ``qdrant`` in this package) implements the contract of
:mod:`releasegate.backup.base`; the Redis and Qdrant ones are imported only when used.
The ledger schema is never part of a set (see :mod:`releasegate.backup.postgres`).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from releasegate import __version__, db
from releasegate.backup.base import (
    Difference,
    FileEntry,
    StagedRestore,
    StoreBackup,
    set_file,
    sha256_file,
)
from releasegate.backup.loss import LossReport, loss_report, traffic
from releasegate.backup.manifest import MANIFEST_NAME, STORE_ORDER, Manifest, is_set_id, new_set_id
from releasegate.config import Settings
from releasegate.errors import (
    CheckFailed,
    ConfigError,
    InfraError,
    ReleasegateError,
    RollbackFailed,
)
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.lock import HeldLock, service_lock
from releasegate.runinfo import git_sha, performer

STORES: tuple[str, ...] = STORE_ORDER
PARTIAL_SUFFIX = ".partial"
# Below this much free space, a failed write is taken for a full disk.
_NEARLY_FULL = 1 << 20


class NotEnoughSpace(InfraError):
    """The backup folder's file system cannot hold the backup."""


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


def _dir_size(path: Path) -> int:
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


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink(missing_ok=True)


def _is_disk_full(exc: BaseException, where: Path) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left on device" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    try:
        return _free_bytes(where) < _NEARLY_FULL
    except OSError:
        return False


def _space_error(root: Path, needed: int, free: int) -> NotEnoughSpace:
    return NotEnoughSpace(
        f"not enough disk space in {root} for the backup"
        f" (needed ~{format_bytes(needed)}, free {format_bytes(free)})"
    )


# -- the size estimate --------------------------------------------------------------------


def estimate_sizes(settings: Settings, stores: Sequence[str]) -> dict[str, int]:
    """A generous size estimate per store, before compression.

    Postgres: its tables without indexes (``pg_table_size``); Redis: ``used_memory``;
    Qdrant: the embedded storage folder (0 for a server, whose size is not exposed).
    """
    sizes: dict[str, int] = {}
    for store in stores:
        if store == "postgres":
            from releasegate.backup import postgres

            sizes[store] = postgres.estimate_size(settings)
        elif store == "redis":
            sizes[store] = _redis_memory(settings)
        elif store == "qdrant":
            _url, path, _key = settings.qdrant_location()
            sizes[store] = _dir_size(path) if path is not None else 0
    return sizes


def _redis_memory(settings: Settings) -> int:
    from releasegate.stores import redis as redis_store

    section = settings.raw.redis
    assert section is not None
    client = redis_store.connect(
        settings.redis_url(),
        purpose="backup estimate",
        timeout=section.connect_timeout,
        source=f"${section.url_env}",
    )
    try:
        info: dict[str, Any] = client.info("memory")
        return int(info.get("used_memory", 0))
    except Exception:  # an estimate only: INFO may be renamed away on managed Redis
        return 0
    finally:
        client.close()


# -- finding sets -------------------------------------------------------------------------


@dataclass
class BackupSet:
    """One set folder: its manifest, or why it cannot be read."""

    set_id: str
    path: Path
    manifest: Manifest | None
    problem: str | None = None

    @property
    def size(self) -> int:
        return self.manifest.total_bytes if self.manifest else _dir_size(self.path)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "set_id": self.set_id,
            "path": str(self.path),
            "bytes": self.size,
            "created_at": m.created_at if m else None,
            "service": m.service if m else None,
            "stores": m.store_names if m else [],
            "versions": dict(m.versions) if m else {},
            "performer": m.performer if m else None,
            "problem": self.problem,
        }


def _set_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and is_set_id(p.name)),
        key=lambda p: p.name,
        reverse=True,
    )


def list_sets(settings: Settings) -> list[BackupSet]:
    """Every backup set in ``backup.dir``, newest first; unreadable ones carry a ``problem``."""
    found: list[BackupSet] = []
    for path in _set_dirs(backup_dir(settings)):
        try:
            found.append(BackupSet(path.name, path, Manifest.read(path)))
        except ReleasegateError as exc:
            found.append(BackupSet(path.name, path, None, str(exc)))
    return found


def resolve_set(settings: Settings, ref: str) -> Path:
    """The folder of a set named by its id, a path (folder or manifest.json), or ``latest``."""
    root = backup_dir(settings)
    if ref == "latest":
        for candidate in list_sets(settings):
            if candidate.manifest is not None:
                return candidate.path
        raise ConfigError(f"no backup sets in {root}: create one with 'releasegate backup create'")
    if is_set_id(ref) and (root / ref).is_dir():
        return root / ref
    path = Path(ref).expanduser()
    if path.is_file() and path.name == MANIFEST_NAME:
        return path.parent.resolve()
    if path.is_dir():
        return path.resolve()
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


def _damage_message(set_id: str, damaged: list[Difference]) -> str:
    first = damaged[0]
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    return (
        f"backup set {set_id} is damaged, nothing restored: {first.store} {first.item}:"
        f" expected {first.expected}, found {first.actual}{more}"
    )


# -- create -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A step of :func:`create`: a store starting, or done with its entry."""

    store: str
    status: Literal["started", "done"]
    entry: StoreBackup | None = None
    seconds: float = 0.0


ProgressCallback = Callable[[Progress], None]


def _summary(entry: StoreBackup) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "method": entry.method,
        "files": len(entry.files),
        "bytes": sum(f.size for f in entry.files),
        "versions": entry.versions,
    }
    if entry.store == "postgres":
        detail["rows"] = entry.counts.get("rows")
        detail["tables"] = len(entry.counts.get("tables", {}))
    elif entry.store == "redis":
        detail["keys"] = entry.counts.get("keys")
    elif entry.store == "qdrant":
        detail["points"] = {
            name: c.get("points") for name, c in entry.counts.get("collections", {}).items()
        }
    return detail


def _manifest_versions(entries: Sequence[StoreBackup]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for entry in entries:
        if entry.store == "postgres":
            versions["alembic"] = entry.versions.get("alembic")
        elif entry.store == "redis":
            versions["redis"] = entry.versions.get("redis")
        elif entry.store == "qdrant":
            found = entry.versions.get("qdrant_migrations", entry.versions.get("qdrant"))
            versions["qdrant"] = None if found is None else str(found)
    return versions


def _ledger_versions(versions: dict[str, str | None], suffix: str) -> dict[str, str | None]:
    return {f"{k}_{suffix}": v for k, v in versions.items() if k in ("alembic", "redis", "qdrant")}


def _new_set_folder(root: Path) -> tuple[str, Path]:
    while True:
        set_id = new_set_id()
        partial = root / f".{set_id}{PARTIAL_SUFFIX}"
        if not (root / set_id).exists():
            try:
                partial.mkdir(mode=0o700)
                return set_id, partial
            except FileExistsError:
                pass
        time.sleep(0.002)


def create(
    settings: Settings,
    *,
    stores: Sequence[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Manifest:
    """Back up every configured store (or ``stores``) into a new set; return its manifest.

    Before anything is written, the free space of ``backup.dir`` is compared with
    :func:`estimate_sizes` times ``backup.free_space_factor``. Any failure removes the partial
    set; a full disk raises :class:`NotEnoughSpace` (exit 3) naming the folder, the space
    needed and the space free. The run is a ledger release of kind ``backup`` with an
    event per store.
    """
    selected = select_stores(settings, stores)
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    root = backup_dir(settings)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the backup folder {root}: {exc.strerror}") from None
    factor = settings.raw.backup.free_space_factor
    sizes = estimate_sizes(settings, selected)
    estimate = sum(sizes.values())
    needed = int(estimate * factor)
    free = _free_bytes(root)
    if factor > 0 and needed > free:
        raise _space_error(root, needed, free)

    started = time.monotonic()
    with Ledger.open(url, "backup") as ledger:
        release_id = ledger.start_release(
            settings.service, "backup", performer(), git_sha=git_sha(settings.root)
        )
        ledger.record_event(
            release_id,
            "preflight",
            StepStatus.OK,
            None,
            {"stores": selected, "estimate_bytes": sizes, "needed": needed, "free": free},
        )
        set_id, partial = _new_set_folder(root)
        entries: list[StoreBackup] = []
        timings: dict[str, float] = {}
        current = "preflight"
        try:
            for store in selected:
                current = store
                if on_progress:
                    on_progress(Progress(store, "started"))
                step_started = time.monotonic()
                entry: StoreBackup = store_module(store).backup(settings, partial)
                took = time.monotonic() - step_started
                timings[store] = round(took, 3)
                entries.append(entry)
                ledger.record_event(
                    release_id, f"backup {store}", StepStatus.OK, took, _summary(entry)
                )
                if on_progress:
                    on_progress(Progress(store, "done", entry, took))
            current = "manifest"
            versions = _manifest_versions(entries)
            timings["total"] = round(time.monotonic() - started, 3)
            manifest = Manifest(
                set_id=set_id,
                service=settings.service,
                created_at=datetime.now(UTC).isoformat(),
                performer=performer(),
                git_sha=git_sha(settings.root),
                releasegate_version=__version__,
                versions=versions,
                stores=entries,
                timings=timings,
                ledger_release_id=release_id,
            )
            manifest.write(partial)
            final = root / set_id
            partial.rename(final)
        except BaseException as exc:
            failure: BaseException = exc
            if isinstance(exc, Exception) and _is_disk_full(exc, partial):
                written = _dir_size(partial)
                failure = _space_error(root, max(needed, estimate, written + 1), free)
            _remove(partial)
            error = str(failure) if isinstance(failure, ReleasegateError) else repr(failure)
            with contextlib.suppress(Exception):
                ledger.record_event(
                    release_id, f"backup {current}", StepStatus.FAILED, None, {"error": error}
                )
                ledger.finish_release(release_id, Outcome.FAILED, {"error": error})
            if failure is exc:
                raise
            raise failure from None
        ledger.finish_release(
            release_id,
            Outcome.SUCCEEDED,
            {
                "set_id": set_id,
                "path": str(final),
                "stores": selected,
                "bytes": manifest.total_bytes,
            },
            **_ledger_versions(versions, "before"),
            **_ledger_versions(versions, "after"),
        )
    return manifest


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
    chosen = _chosen(manifest, stores)
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


def _chosen(manifest: Manifest, stores: Sequence[str] | None) -> list[str]:
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


# -- restore ------------------------------------------------------------------------------


@dataclass
class RestoreResult:
    """What :func:`restore` did, store by store, and the ledger release recording it."""

    set_id: str
    path: Path
    release_id: int
    loss: LossReport
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    versions_before: dict[str, str | None] = field(default_factory=dict)
    versions_after: dict[str, str | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    while_live: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "set_id": self.set_id,
            "path": str(self.path),
            "release_id": self.release_id,
            "loss": self.loss.to_dict(),
            "stores": self.stores,
            "skipped": self.skipped,
            "versions_before": self.versions_before,
            "versions_after": self.versions_after,
            "timings": self.timings,
            "while_live": self.while_live,
            "seconds": round(self.seconds, 3),
        }


def live_versions(settings: Settings, stores: Sequence[str]) -> dict[str, str | None]:
    """The Alembic revision and the Redis/Qdrant data-migration versions now (None if unknown)."""
    versions: dict[str, str | None] = {}
    for store in stores:
        try:
            if store == "postgres":
                from releasegate.backup import postgres

                url = settings.postgres_url()
                with db.connect(
                    url, "restore", connect_timeout=settings.raw.postgres.connect_timeout
                ) as conn:
                    versions["alembic"] = postgres.format_alembic(postgres.alembic_revisions(conn))
            elif store == "redis":
                versions["redis"] = _redis_version(settings)
            elif store == "qdrant":
                versions["qdrant"] = _qdrant_version(settings)
        except (ReleasegateError, ImportError):
            versions[_version_name(store)] = None
    return versions


def _version_name(store: str) -> str:
    return "alembic" if store == "postgres" else store


def _redis_version(settings: Settings) -> str | None:
    from releasegate.stores import redis as redis_store

    section = settings.raw.redis
    assert section is not None
    from releasegate.migrations.redis.engine import read_version

    client = redis_store.connect(
        settings.redis_url(), purpose="restore", timeout=section.connect_timeout
    )
    try:
        return read_version(client, section.version_key)
    finally:
        client.close()


def _qdrant_version(settings: Settings) -> str | None:
    from releasegate.migrations.qdrant import applied_version
    from releasegate.stores.qdrant import open_store

    with open_store(settings) as store:
        return str(applied_version(settings, store))


@contextlib.contextmanager
def _lock(settings: Settings, held: HeldLock | None, purpose: str) -> Iterator[HeldLock]:
    if held is not None:
        held.ensure_held()
        yield held
        return
    with service_lock(settings, purpose) as lock:
        yield lock


def _restore_stores(
    settings: Settings, manifest: Manifest, stores: Sequence[str] | None
) -> tuple[list[str], dict[str, str]]:
    """The stores to restore, and the stores of the set skipped (with why)."""
    available = configured_stores(settings)
    skipped: dict[str, str] = {}
    if stores:
        chosen = _chosen(manifest, stores)
        for name in chosen:
            if (why := available[name]) is not None:
                raise ConfigError(f"cannot restore {name}: {why}")
        return chosen, skipped
    chosen = []
    for name in manifest.store_names:
        if (why := available.get(name)) is None:
            chosen.append(name)
        else:
            skipped[name] = why
    if not chosen:
        raise ConfigError(
            f"nothing to restore from backup set {manifest.set_id}: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    return chosen, skipped


def _unconfirmed(set_id: str, yes: bool, live: str | None, while_live: bool) -> str | None:
    """Why a restore may not go ahead yet (the flags it lacks), or None."""
    if not yes:
        also = f"; {live} serves traffic: add --while-live too" if live and not while_live else ""
        return (
            f"restoring backup set {set_id} replaces the stores' contents, nothing changed:"
            f" review what it would lose and confirm with --yes{also}"
        )
    if live and not while_live:
        return (
            f"{live} serves traffic: restoring backup set {set_id} under a live color needs"
            " --while-live as well as --yes; nothing changed"
        )
    return None


def restore(
    settings: Settings,
    set_ref: str,
    *,
    stores: Sequence[str] | None = None,
    yes: bool = False,
    while_live: bool = False,
    held_lock: HeldLock | None = None,
    on_report: Callable[[LossReport], None] | None = None,
) -> RestoreResult:
    """Put a backup set back into the configured stores, under the release lock.

    1. Every file of the chosen stores is checked (size, SHA-256, inside the set folder,
       every file the restore reads listed): a damaged set raises :class:`CheckFailed`.
    2. The loss report (:mod:`releasegate.backup.loss`): what the restore would take away
       from each table, key pattern and collection, passed to ``on_report``.
    3. Nothing is touched unless ``yes``, and while a color serves traffic (the router's
       live color) unless ``while_live`` as well: else :class:`ConfigError` (exit 2). The
       live color and the report are taken again under the lock before the restore.
    4. All or nothing across the stores: each is staged first without changing what
       the service reads (Redis keys beside the live ones, copies of the Qdrant
       collections to replace, the Postgres restore in one open transaction: see each
       store's ``stage``), then committed (Qdrant, Redis, Postgres last). A failure
       anywhere aborts what is staged and undoes what was committed: every store is as
       it was (the error says so), or :class:`RollbackFailed` names what could not be
       put back. Then Postgres' rows per table are compared with the manifest.

    ``stores`` defaults to every store of the set that is configured here (the others are
    listed in ``result.skipped``). The ledger gets a release of kind ``restore`` with the
    loss report, an event per store and the versions before and after. A caller that
    already holds the release lock passes it as ``held_lock``.
    """
    started = time.monotonic()
    path, manifest = open_set(settings, set_ref)
    chosen, skipped = _restore_stores(settings, manifest, stores)
    damaged = check_files(path, manifest, chosen)
    if damaged:
        raise CheckFailed(_damage_message(manifest.set_id, damaged))
    entries = [e for e in manifest.stores if e.store in chosen]
    by_store = {e.store: e for e in entries}
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")

    def report_now(live: str | None, router: str) -> LossReport:
        report = loss_report(
            settings, path, manifest.set_id, entries, live_color=live, router=router
        )
        if on_report:
            on_report(report)
        return report

    live, router = traffic(settings)
    if (why := _unconfirmed(manifest.set_id, yes, live, while_live)) is not None:
        report_now(live, router)
        raise ConfigError(why)
    with (
        _lock(settings, held_lock, "backup restore") as lock,
        Ledger.open(url, "restore") as ledger,
    ):
        live, router = traffic(settings)  # again, under the lock
        if (why := _unconfirmed(manifest.set_id, yes, live, while_live)) is not None:
            raise ConfigError(why)
        report = report_now(live, router)
        before = live_versions(settings, chosen)
        release_id = ledger.start_release(
            settings.service,
            "restore",
            performer(),
            git_sha=git_sha(settings.root),
            **_ledger_versions(before, "before"),
        )
        result = RestoreResult(
            manifest.set_id, path, release_id, report, skipped=skipped, while_live=while_live
        )
        result.versions_before = before
        summary = {"set_id": manifest.set_id, "stores": chosen, "skipped": skipped}
        ledger.record_event(
            release_id, "lock", StepStatus.OK, lock.waited, {**summary, "loss": report.to_dict()}
        )
        step = "lock"
        staged: dict[str, StagedRestore] = {}
        committed: list[str] = []
        outcomes: dict[str, dict[str, Any]] = {}
        try:
            for store in (s for s in STAGE_ORDER if s in chosen):
                step = f"stage {store}"
                lock.ensure_held()
                step_started = time.monotonic()
                staged[store] = store_module(store).stage(
                    settings, path, by_store[store], force=True
                )
                result.timings[store] = time.monotonic() - step_started
            for store in (s for s in COMMIT_ORDER if s in staged):
                step = f"restore {store}"
                lock.ensure_held()
                step_started = time.monotonic()
                outcomes[store] = staged[store].commit()
                committed.append(store)
                took = time.monotonic() - step_started
                result.timings[store] = round(result.timings[store] + took, 3)
                ledger.record_event(release_id, step, StepStatus.OK, took, outcomes[store])
        except BaseException as exc:
            failure = unwind(staged, committed, exc)
            error = str(failure) if isinstance(failure, ReleasegateError) else repr(failure)
            with contextlib.suppress(Exception):
                ledger.record_event(release_id, step, StepStatus.FAILED, None, {"error": error})
                after = live_versions(settings, chosen)
                ledger.finish_release(
                    release_id,
                    Outcome.FAILED,
                    {"set_id": manifest.set_id, "error": error},
                    **_ledger_versions(after, "after"),
                )
            if failure is exc:
                raise
            raise failure from None
        try:  # the restore stands: drop what was kept for an undo, then check it
            step = "check"
            for store in chosen:
                staged[store].finish()
                result.stores[store] = outcomes[store]
            if "postgres" in by_store:
                _check_postgres(by_store["postgres"], outcomes["postgres"])
        except ReleasegateError as exc:
            with contextlib.suppress(Exception):
                ledger.record_event(release_id, step, StepStatus.FAILED, None, {"error": str(exc)})
                ledger.finish_release(
                    release_id, Outcome.FAILED, {"set_id": manifest.set_id, "error": str(exc)}
                )
            raise
        result.versions_after = live_versions(settings, chosen)
        result.seconds = time.monotonic() - started
        ledger.finish_release(
            release_id,
            Outcome.SUCCEEDED,
            {**summary, "while_live": while_live},
            **_ledger_versions(result.versions_after, "after"),
        )
    return result


# Postgres is staged last (its open transaction holds locks) and committed last (a
# committed transaction cannot be undone; Redis and Qdrant can put their keys back).
STAGE_ORDER = ("redis", "qdrant", "postgres")
COMMIT_ORDER = ("qdrant", "redis", "postgres")


def unwind(
    staged: dict[str, StagedRestore], committed: list[str], exc: BaseException
) -> BaseException:
    """After a failure: abort what is only staged, undo what was committed (newest first);
    the error to raise, saying that nothing changed or what could not be put back."""
    for store, item in staged.items():
        if store not in committed:
            with contextlib.suppress(Exception):
                item.abort()
    failed: list[str] = []
    for store in reversed(committed):
        try:
            staged[store].undo()
        except ReleasegateError as undo_error:
            failed.append(str(undo_error))
    if failed:
        return RollbackFailed(f"{exc}; then {'; '.join(failed)}")
    if isinstance(exc, ReleasegateError):
        return type(exc)(f"{exc}; no store was changed")
    return exc


def _check_postgres(entry: StoreBackup, outcome: dict[str, Any]) -> None:
    from releasegate.backup import postgres

    found = postgres.compare(entry, outcome.get("tables", {}), None, outcome.get("alembic_after"))
    if found:
        first = found[0]
        raise CheckFailed(
            f"the restored Postgres differs from the backup: {first.describe()}"
            + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
        )


# -- prune --------------------------------------------------------------------------------


def prune(settings: Settings, keep: int | None = None) -> list[BackupSet]:
    """Remove the oldest sets beyond the newest ``keep`` (default ``backup.keep``).

    Sets are ordered by their id, that is by age. Returns the removed sets.
    """
    keep = settings.raw.backup.keep if keep is None else keep
    if keep < 1:
        raise ConfigError("prune must keep at least one backup set")
    removed = list_sets(settings)[keep:]
    for item in removed:
        shutil.rmtree(item.path)
    return removed
