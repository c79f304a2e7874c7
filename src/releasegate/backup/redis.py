"""Redis restore points: a logical export (SCAN + DUMP) into one compact file.

Works on managed Redis: no ``BGSAVE``, no access to the server's filesystem, only
``SCAN``, ``DUMP``, ``RESTORE`` and a small Lua script. This module holds the operations
of a store backup module (backup, stage/restore, counts, verify); the file format is in
:mod:`~releasegate.backup.redis_format`, the export in
:mod:`~releasegate.backup.redis_export`, the restore of a file in
:mod:`~releasegate.backup.redis_restore` and the counts in
:mod:`~releasegate.backup.redis_counts`.

Which keys: the union of ``redis.patterns`` (Redis glob syntax). With one pattern the
server filters (``SCAN MATCH``); with several, the keyspace is scanned once and filtered
client-side, so a key matched by several patterns is exported once. ``SCAN`` itself may
return a key twice when the keyspace is resized during the export; such duplicates are
dropped within a page, and a restore counts any left (``duplicates``) instead of failing.

An export is consistent per key, not across keys: for a point-in-time copy, quiesce
writers first (the blue/green flow takes it with the old color drained).
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from releasegate.backup.base import Difference, FileEntry, StoreBackup, set_file
from releasegate.backup.redis_counts import add_counts, compare_counts, count_keys
from releasegate.backup.redis_export import export_keys
from releasegate.backup.redis_format import FILE_NAME, FORMAT_VERSION, check_file
from releasegate.backup.redis_restore import first_matching_key, restore_file
from releasegate.backup.redis_scratch import SCRATCH_TTL_FLOOR_MS, scratch_target
from releasegate.config import RedisSection, Settings
from releasegate.errors import CheckFailed, ConfigError, RollbackFailed, StateError
from releasegate.secrets import mask_url
from releasegate.stores import redis as stores

METHOD = "scan+dump"


# -- the four operations of a store backup module ----------------------------------------


def _section(settings: Settings) -> RedisSection:
    if settings.raw.redis is None:
        raise ConfigError(f"{settings.path.name} has no [redis] section")
    return settings.raw.redis


def _client(settings: Settings, purpose: str, db: int | None = None) -> redis.Redis:
    section = _section(settings)
    return stores.connect(
        settings.redis_url(),
        purpose=purpose,
        timeout=section.connect_timeout,
        db=db,
        source=f"${section.url_env}",
    )


def _read_version(client: redis.Redis, key: str) -> str | None:
    value = client.get(key)
    return value.decode() if isinstance(value, bytes) else None


def backup(settings: Settings, set_dir: Path) -> StoreBackup:
    """Export the configured patterns of the configured Redis into ``set_dir/redis.rgdump``."""
    section = _section(settings)
    url = settings.redis_url()
    client = _client(settings, "backup")
    try:
        info = stores.server_info(client)
        version = _read_version(client, section.version_key)
        set_dir.mkdir(parents=True, exist_ok=True)
        path = set_dir / FILE_NAME
        meta = {
            "created_at": datetime.now(UTC).isoformat(),
            "source": stores.describe_target(url),
            "redis_version": info["redis_version"],
            "version_key": section.version_key,
            "version": version,
        }
        try:
            result = export_keys(
                client, path, section.patterns, batch_size=section.batch_size, meta=meta
            )
        except redis.RedisError as exc:
            raise stores.infra_error(client, exc, "exporting keys") from None
    finally:
        client.close()
    return StoreBackup(
        store="redis",
        method=METHOD,
        files=[FileEntry.of(set_dir, path)],
        counts=result.counts,
        versions={"redis": version},
        tools={"redis-server": info["redis_version"], "format": str(FORMAT_VERSION)},
        timings={"export": round(result.seconds, 3)},
        extra={
            "source": mask_url(stores.describe_target(url)),
            "patterns": list(section.patterns),
            "vanished": result.vanished,
            "bytes": result.bytes,
        },
    )


def required_files(entry: StoreBackup) -> list[str]:
    """The manifest file a restore of ``entry`` reads: its one ``.rgdump`` file."""
    names = [f.name for f in entry.files if f.name.endswith(".rgdump")]
    if len(names) > 1:
        raise CheckFailed(f"the redis entry lists {len(names)} .rgdump files, not one")
    return names or [FILE_NAME]


def dump_path(set_dir: Path, entry: StoreBackup) -> Path:
    """The entry's dump file; only a file the manifest lists (and so was checksummed)."""
    name = required_files(entry)[0]
    if name not in {f.name for f in entry.files}:
        raise CheckFailed(f"backup set {set_dir.name} is damaged: the manifest lists no {name}")
    path = set_file(set_dir, name)
    if not path.is_file():
        raise CheckFailed(f"redis backup file {name} is missing from {set_dir.name}")
    return path


# Where a restore stages the set's keys and holds the live ones until every store is done;
# the release lock keeps restores apart.
STAGING_PREFIX = b"releasegate:restore:"


def _unlink_all(client: redis.Redis, match: str, batch: int) -> int:
    removed = 0
    for _cursor, page in stores.scan_pages(client, match, batch):
        if page:
            removed += int(client.unlink(*page))
    return removed


def _keys(client: redis.Redis, prefix: bytes, batch: int) -> list[bytes]:
    match = stores.glob_escape(prefix.decode()) + "*"
    return [key for _cursor, page in stores.scan_pages(client, match, batch) for key in page]


def _execute(pipe: Any, doing: str) -> list[Any]:
    """Run a MULTI; a key gone by then (its TTL ran out) is not an error."""
    replies: list[Any] = pipe.execute(raise_on_error=False)
    failed = [
        r for r in replies if isinstance(r, Exception) and "no such key" not in str(r).lower()
    ]
    if failed:
        raise CheckFailed(f"{doing} failed: {stores.first_line(failed[0])}")
    return replies


class StagedRestore:
    """A Redis restore staged beside the live keys: swapped in by :meth:`commit`.

    Building it RESTOREs every key of the file under ``releasegate:restore:<token>:new:``;
    a failure there (a payload this server rejects, a lost connection) removes what was
    staged and leaves the live keys as they were. :meth:`commit` is one ``MULTI``: each
    live key matching the patterns is renamed under ``...:old:`` (held), each staged key
    renamed to its name, the version key set; no client sees a state in between, and a
    connection lost before ``EXEC`` changes nothing. :meth:`undo` swaps back the same
    way; :meth:`finish` drops the held keys. Staged or held keys that a killed restore
    left behind are removed by the next restore.
    """

    store = "redis"

    def __init__(self, settings: Settings, set_dir: Path, entry: StoreBackup, *, force: bool):
        section = _section(settings)
        self.batch = section.batch_size
        path = dump_path(set_dir, entry)
        meta, _n = check_file(path)
        self.patterns = list(meta.get("patterns") or ["*"])
        token = STAGING_PREFIX + uuid.uuid4().hex[:12].encode()
        self.new, self.old = token + b":new:", token + b":old:"
        self.version_key: str | None = None
        exported = entry.extra.get("patterns", section.patterns)
        if not stores.PatternSet(exported).matching(section.version_key.encode()):
            self.version_key = section.version_key
        self.version = entry.versions.get("redis")
        self.client = _client(settings, "restore")
        self.swapped: list[bytes] = []
        self.held: list[bytes] = []
        self.version_before: bytes | None = None
        try:
            if not force and (found := first_matching_key(self.client, self.patterns)) is not None:
                raise StateError(
                    f"refusing to restore into a non-empty Redis: key {found[:80]!r} matches"
                    f" the backup's patterns {self.patterns}; empty it first or force the restore"
                )
            _unlink_all(self.client, stores.glob_escape(STAGING_PREFIX.decode()) + "*", self.batch)
            self.result = restore_file(
                self.client, path, check_empty=False, batch_size=self.batch, key_prefix=self.new
            )
            self.result.version = self.version
        except redis.RedisError as exc:
            self.abort()
            raise stores.infra_error(self.client, exc, "staging the restored keys") from None
        except BaseException:
            self.abort()
            raise

    def commit(self) -> dict[str, Any]:
        """Swap the staged keys in (one ``MULTI``); a failure leaves Redis as it was."""
        try:
            staged = _keys(self.client, self.new, self.batch)
            live = stores.PatternSet(self.patterns, exclude_prefixes=[STAGING_PREFIX])
            current = [
                key
                for _cursor, page in stores.scan_pages(self.client, live.match, self.batch)
                for key in page
                if live.wanted(key)
            ]
            if self.version_key is not None:
                value = self.client.get(self.version_key)
                self.version_before = value if isinstance(value, bytes) else None
            pipe = self.client.pipeline(transaction=True)
            for key in current:
                pipe.rename(key, self.old + key)
            for key in staged:
                pipe.rename(key, key[len(self.new) :])
            if self.version_key is not None:
                if self.version is None:
                    pipe.delete(self.version_key)
                else:
                    pipe.set(self.version_key, self.version)
            replies = _execute(pipe, "the swap of the restored keys")
        except redis.RedisError as exc:
            raise stores.infra_error(self.client, exc, "swapping the restored keys") from None
        self.swapped = [key[len(self.new) :] for key in staged]
        self.held = [self.old + key for key in current]
        moved = sum(1 for r in replies[len(current) : len(current) + len(staged)] if r is True)
        return {**self.result.to_dict(), "swap": {"held": len(current), "renamed": moved}}

    def abort(self) -> None:
        """Drop the staged keys; the live ones were never touched."""
        with contextlib.suppress(redis.RedisError):
            _unlink_all(self.client, stores.glob_escape(self.new.decode()) + "*", self.batch)
        self.client.close()

    def undo(self) -> None:
        """Swap back after :meth:`commit` (one ``MULTI``): the live keys as they were."""
        try:
            pipe = self.client.pipeline(transaction=True)
            for at in range(0, len(self.swapped), self.batch):
                pipe.unlink(*self.swapped[at : at + self.batch])
            for key in self.held:
                pipe.rename(key, key[len(self.old) :])
            if self.version_key is not None:
                if self.version_before is None:
                    pipe.delete(self.version_key)
                else:
                    pipe.set(self.version_key, self.version_before)
            _execute(pipe, "putting the previous keys back")
        except (redis.RedisError, CheckFailed) as exc:
            raise RollbackFailed(
                f"putting the previous Redis keys back failed ({exc}); they are kept under"
                f" {self.old.decode()}"
            ) from None
        finally:
            self.client.close()

    def finish(self) -> None:
        """Drop the held keys: the restore stands."""
        try:
            _unlink_all(self.client, stores.glob_escape(self.old.decode()) + "*", self.batch)
        except redis.RedisError as exc:
            raise stores.infra_error(self.client, exc, "removing the previous keys") from None
        finally:
            self.client.close()


def stage(
    settings: Settings, set_dir: Path, entry: StoreBackup, *, force: bool = False
) -> StagedRestore:
    """Stage a backup set's Redis file beside the live keys (:class:`StagedRestore`).

    Refuses (:class:`StateError`, exit 1) when any key matching the backup's patterns
    exists, unless ``force``. Keys keep their remaining TTL; keys that expired since the
    backup are skipped and counted. The data-migration version key is set to the backup's
    version when the file does not carry it itself.
    """
    return StagedRestore(settings, set_dir, entry, force=force)


def restore(
    settings: Settings, set_dir: Path, entry: StoreBackup, *, force: bool = False
) -> dict[str, Any]:
    """Restore a backup set's Redis file into the configured Redis, all or nothing
    (:func:`stage`, then commit): Redis ends exactly as backed up. Returns the
    :class:`RestoreResult` as a dict, with the swap's figures."""
    staged = stage(settings, set_dir, entry, force=force)
    try:
        outcome = staged.commit()
    except BaseException:
        staged.abort()
        raise
    staged.finish()
    return outcome


def counts(settings: Settings) -> dict[str, Any]:
    """Live counts of the configured Redis, in the manifest's shape (:class:`KeyCounts`)."""
    section = _section(settings)
    client = _client(settings, "counts")
    try:
        return count_keys(client, section.patterns, batch_size=section.batch_size)
    except redis.RedisError as exc:
        raise stores.infra_error(client, exc, "counting keys") from None
    finally:
        client.close()


# -- verification in a scratch place ------------------------------------------------------


def verify(settings: Settings, set_dir: Path, entry: StoreBackup) -> list[Difference]:
    """Restore the backup into a scratch logical DB and compare counts with the manifest.

    Compares keys in total, per type, with a TTL, and the same per pattern. Keys with a
    TTL are restored with at least an hour left, so the copy cannot shrink while it is
    counted. The scratch DB (or prefix) is emptied afterwards. Returns the differences;
    an empty list means the backup restores to what the manifest says.
    """
    section = _section(settings)
    url = settings.redis_url()
    path = dump_path(set_dir, entry)
    stores.check_url(url, f"${section.url_env}")
    with scratch_target(
        url, source_db=stores.database_index(url), timeout=section.connect_timeout
    ) as target:
        try:
            result = restore_file(
                target.client,
                path,
                check_empty=False,
                batch_size=section.batch_size,
                key_prefix=target.prefix,
                ttl_floor_ms=SCRATCH_TTL_FLOOR_MS,
            )
            patterns = list(entry.counts.get("patterns") or section.patterns)
            live = count_keys(
                target.client,
                patterns,
                batch_size=section.batch_size,
                key_prefix=target.prefix,
                exclude_prefixes=[target.claim_key],
            )
        except redis.RedisError as exc:
            raise stores.infra_error(target.client, exc, "verifying a restore") from None
    # Duplicates in the file were counted at export; add them back to what was restored.
    seen = add_counts(live, result.skipped_counts)
    return compare_counts(entry.counts, seen)
