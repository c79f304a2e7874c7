"""Restore of a Redis dump file into a database: pipelined ``RESTORE ... ABSTTL``.

The file is read through once before anything is written; a payload the server cannot
read is found by a probe key first. ``SCAN`` may have listed a key twice at export;
such duplicates are counted (``duplicates``) instead of failing the restore.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from releasegate.backup.redis_counts import KeyCounts
from releasegate.backup.redis_format import BATCH_BYTES, DumpReader, Record, check_file
from releasegate.errors import CheckFailed, StateError
from releasegate.stores import redis as stores


@dataclass
class RestoreResult:
    restored: int = 0
    expired: int = 0  # TTL ran out between backup and restore: skipped
    duplicates: int = 0  # a key the file holds twice (SCAN duplicates): kept once
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)  # of the keys restored
    skipped_counts: dict[str, Any] = field(default_factory=dict)  # expired + duplicates
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def first_matching_key(client: redis.Redis, patterns: Sequence[str]) -> bytes | None:
    """Any key matching one of ``patterns``, or None (an emptiness check)."""
    pattern_set = stores.PatternSet(patterns)
    if pattern_set.match == "*" and not pattern_set.needs_filter and not client.dbsize():
        return None
    for _cursor, page in stores.scan_pages(client, pattern_set.match, 1000):
        for key in page:
            if pattern_set.wanted(key):
                return bytes(key)
    return None


def _probe(client: redis.Redis, path: Path) -> None:
    """RESTORE the first key under a throwaway name, so that a payload this server cannot
    read (a dump from a newer Redis) fails before anything is written."""
    first = next(iter(DumpReader(path).records()), None)
    if first is None:
        return
    probe = f"releasegate:probe:{uuid.uuid4().hex}"
    try:
        client.restore(probe, 0, first.payload, replace=True)
        client.delete(probe)
    except redis.ResponseError as exc:
        raise CheckFailed(
            f"this Redis cannot restore {path.name}: {stores.first_line(exc)}"
            " (was the backup taken from a newer Redis version?)"
        ) from None
    except redis.RedisError as exc:
        raise stores.infra_error(client, exc, f"restoring {path.name}") from None


def restore_file(
    client: redis.Redis,
    path: Path,
    *,
    replace: bool = False,
    check_empty: bool = True,
    batch_size: int = 1000,
    key_prefix: bytes = b"",
    ttl_floor_ms: int | None = None,
) -> RestoreResult:
    """RESTORE every key of a dump file into ``client``'s database, in pipelined batches.

    The file is read through once first: a damaged file raises :class:`CheckFailed` and
    nothing is written. Unless ``check_empty`` is off, a target holding any key that
    matches the file's patterns is refused (:class:`StateError`). Keys keep their remaining
    TTL (``RESTORE ... ABSTTL``, against the server's clock); keys whose TTL ran out since
    the backup are skipped and counted. ``replace`` overwrites existing keys (``REPLACE``).
    ``key_prefix`` restores each key under a prefix; ``ttl_floor_ms`` gives every key with
    a TTL at least that much (a scratch copy whose keys must not expire while it is being
    checked). Two batches are kept in flight, so reading the file overlaps with Redis
    restoring the previous batch.
    """
    started = time.monotonic()
    meta, _n = check_file(path)
    patterns = meta.get("patterns") or ["*"]
    if check_empty and not replace:
        prefix_glob = stores.glob_escape(key_prefix.decode())
        found = first_matching_key(client, [prefix_glob + p for p in patterns])
        if found is not None:
            raise StateError(
                f"refusing to restore into a non-empty Redis: key {found[:80]!r} matches the"
                f" backup's patterns {patterns}; empty it first or force the restore"
            )
    _probe(client, path)
    restored = KeyCounts(patterns)
    skipped = KeyCounts(patterns)
    result = RestoreResult()
    flags = [b"ABSTTL", b"REPLACE"] if replace else [b"ABSTTL"]
    pack = stores.pack_command
    try:
        seconds, micros = client.time()
        clock_offset = int(seconds) * 1000 + int(micros) // 1000 - int(time.time() * 1000)
    except redis.RedisError as exc:
        raise stores.infra_error(client, exc, f"restoring {path.name}") from None
    conn: Any = client.connection_pool.get_connection()
    in_flight: deque[list[Record]] = deque()

    def send(batch: list[Record]) -> None:
        now_ms = int(time.time() * 1000) + clock_offset
        commands: list[bytes] = []
        sent: list[Record] = []
        for rec in batch:
            expire_at = rec.expire_at_ms
            if expire_at and ttl_floor_ms is not None:
                expire_at = max(expire_at, now_ms + ttl_floor_ms)
            if expire_at and expire_at <= now_ms:
                result.expired += 1
                skipped.add(rec.key, rec.type_code, True)
                continue
            args = [b"RESTORE", key_prefix + rec.key, b"%d" % expire_at, rec.payload]
            commands.append(pack(args + flags if expire_at else args + flags[1:]))
            sent.append(rec)
        if sent:
            conn.send_packed_command([b"".join(commands)])
            in_flight.append(sent)

    def collect() -> None:
        for rec in in_flight.popleft():
            try:
                conn.read_response()
            except redis.ResponseError as exc:
                if not str(exc).startswith("BUSYKEY"):
                    error = stores.first_line(exc)
                    raise CheckFailed(
                        f"RESTORE of key {rec.key[:80]!r} from {path.name} failed: {error}"
                    ) from None
                result.duplicates += 1
                skipped.add(rec.key, rec.type_code, rec.expire_at_ms > 0)
                continue
            result.restored += 1
            restored.add(rec.key, rec.type_code, rec.expire_at_ms > 0)

    try:
        batch: list[Record] = []
        batch_bytes = 0
        for rec in DumpReader(path).records():
            batch.append(rec)
            batch_bytes += len(rec.payload) + len(rec.key)
            if len(batch) >= batch_size or batch_bytes >= BATCH_BYTES:
                send(batch)
                batch, batch_bytes = [], 0
                if len(in_flight) > 1:
                    collect()
        send(batch)
        while in_flight:
            collect()
    except redis.RedisError as exc:
        raise stores.infra_error(client, exc, f"restoring {path.name}") from None
    finally:
        if in_flight:  # stopped with replies pending: the connection is unusable
            conn.disconnect()
        client.connection_pool.release(conn)
    result.seconds = time.monotonic() - started
    result.counts = restored.to_dict()
    result.skipped_counts = skipped.to_dict()
    return result
