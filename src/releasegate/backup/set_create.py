"""Creating a backup set: every chosen store into a new set folder, or nothing at all.

The set is built in a hidden ``.<set id>.partial`` folder and renamed into place once its
manifest is written; free space is checked against an estimate first, and a full disk is
reported as :class:`NotEnoughSpace` (exit 3). The set is then copied to its destination
(:mod:`releasegate.backup.destinations`), which is checked before the backup starts: a
destination that cannot be reached or refuses the set fails the backup (exit 3) and
leaves no set behind, here or there.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from releasegate import __version__, db
from releasegate.backup.base import StoreBackup
from releasegate.backup.destinations import destination_for
from releasegate.backup.manifest import Manifest, new_set_id
from releasegate.backup.sets import (
    PARTIAL_SUFFIX,
    backup_dir,
    dir_size,
    format_bytes,
    ledger_versions,
    select_stores,
    store_module,
)
from releasegate.config import Settings
from releasegate.errors import ConfigError, InfraError, ReleasegateError
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.runinfo import git_sha, performer

# Below this much free space, a failed write is taken for a full disk.
_NEARLY_FULL = 1 << 20


class NotEnoughSpace(InfraError):
    """The backup folder's file system cannot hold the backup."""


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
            sizes[store] = dir_size(path) if path is not None else 0
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
    destination = destination_for(settings)
    destination.check()  # an unusable destination fails the backup before it is taken

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
            current = "upload"
            step_started = time.monotonic()
            destination.put_set(final, set_id)
            ledger.record_event(
                release_id,
                "destination",
                StepStatus.OK,
                time.monotonic() - step_started,
                {"destination": destination.describe()},
            )
        except BaseException as exc:
            failure: BaseException = exc
            if current != "upload" and isinstance(exc, Exception) and _is_disk_full(exc, partial):
                written = dir_size(partial)
                failure = _space_error(root, max(needed, estimate, written + 1), free)
            _remove(partial)
            if current == "upload":  # a set that did not reach its destination is no set
                _remove(root / set_id)
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
                "destination": destination.describe(),
                "stores": selected,
                "bytes": manifest.total_bytes,
            },
            **ledger_versions(versions, "before"),
            **ledger_versions(versions, "after"),
        )
    return manifest
