"""The keys of a Redis backup set compared with the live keyspace, by value.

The set's dump file (:class:`~releasegate.backup.redis_format.DumpReader`) is read in batches.
For each batch one Lua call on the live Redis tells, per key: gone, or of another type,
or whether its ``DUMP`` payload has the same SHA-1 as the one in the file (same bytes:
unchanged). Payloads that differ may still hold the same value in another encoding (a
hash converted from listpack to hashtable, a newer RDB version), so those keys are
restored into a scratch place (an empty logical DB, else a key prefix) and a logical
digest of each copy — strings by value, hashes and sets sorted, lists in order, sorted
sets with scores, stream entries — is compared with the live key's. Memory: one batch,
plus 8 bytes per key of the set to find the keys added since (:class:`IdSet`).

Not missing: keys whose TTL ran out since the backup (``expired``). Not compared: keys of
``redis.volatile_patterns`` (caches the service deletes freely; ``volatile``) and the
data-migration version key (versions are compared on their own). TTLs themselves are not
compared, nor a stream's consumer groups.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from releasegate.backup.base import StoreBackup
from releasegate.backup.content_diff import ContentDiff, IdSet, ScopeDiff, checked_file, short
from releasegate.backup.redis import dump_path
from releasegate.backup.redis_format import BATCH_BYTES, DumpReader, Record
from releasegate.backup.redis_scratch import ScratchTarget, scratch_target
from releasegate.config import RedisSection, Settings
from releasegate.errors import CheckFailed, ConfigError
from releasegate.stores import redis as stores

# Scratch copies (backup verification, this module) live under this prefix when no empty
# logical DB is free; the live keyspace never counts them.
_SCRATCH_PREFIX = b"releasegate:verify:"

# Per key: "0" gone (or expired), "3" another type, "1" the DUMP payload has the expected
# SHA-1, "2" it has another. ARGV: expected SHA-1 and type code per key. Returns
# {server time in ms, statuses}.
_CHECK_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local codes = {string=0, hash=1, list=2, set=3, zset=4, stream=5}
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    out[i] = '0'
  elseif (codes[kind] or 255) ~= tonumber(ARGV[2 * i]) then
    out[i] = '3'
  else
    local payload = redis.call('DUMP', key)
    if payload and redis.sha1hex(payload) == ARGV[2 * i - 1] then
      out[i] = '1'
    else
      out[i] = '2'
    end
  end
end
return {now, table.concat(out)}
"""

# A digest of each key's value independent of its encoding (SHA-1 hex, '' when gone).
_DIGEST_LUA = """
local function add(parts, s) parts[#parts + 1] = #s .. ':' .. s end
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  local parts = {kind}
  if kind == 'none' then
    parts = nil
  elseif kind == 'string' then
    add(parts, redis.call('GET', key))
  elseif kind == 'hash' then
    local flat = redis.call('HGETALL', key)
    local fields = {}
    for j = 1, #flat, 2 do
      fields[#fields + 1] = #flat[j] .. ':' .. flat[j] .. #flat[j + 1] .. ':' .. flat[j + 1]
    end
    table.sort(fields)
    for _, f in ipairs(fields) do parts[#parts + 1] = f end
  elseif kind == 'list' then
    for _, v in ipairs(redis.call('LRANGE', key, 0, -1)) do add(parts, v) end
  elseif kind == 'set' then
    local members = redis.call('SMEMBERS', key)
    table.sort(members)
    for _, v in ipairs(members) do add(parts, v) end
  elseif kind == 'zset' then
    for _, v in ipairs(redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')) do add(parts, v) end
  elseif kind == 'stream' then
    for _, entry in ipairs(redis.call('XRANGE', key, '-', '+')) do
      add(parts, entry[1])
      for _, v in ipairs(entry[2]) do add(parts, v) end
    end
  else
    add(parts, redis.call('DUMP', key))
  end
  out[i] = parts and redis.sha1hex(table.concat(parts, '|')) or ''
end
return out
"""


def _section(settings: Settings) -> RedisSection:
    if settings.raw.redis is None:
        raise ConfigError(f"{settings.path.name} has no [redis] section")
    return settings.raw.redis


def _ident(key: bytes) -> str:
    return short(key.decode("utf-8", "backslashreplace"))


class _Comparison:
    """One comparison's state: the live client, scopes, the scratch place once needed."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        diff: ContentDiff,
        patterns: Sequence[str],
        stack: contextlib.ExitStack,
    ) -> None:
        section = _section(settings)
        self.settings = settings
        self.client = client
        self.diff = diff
        self.keyspace = stores.PatternSet(patterns, [_SCRATCH_PREFIX])
        self.volatile = (
            stores.PatternSet(section.volatile_patterns) if section.volatile_patterns else None
        )
        self.version_key = section.version_key.encode()
        self.batch_size = section.batch_size
        self.seen = IdSet()
        self._check = client.register_script(_CHECK_LUA)
        self._digest = client.register_script(_DIGEST_LUA)
        self._stack = stack
        self._scratch: ScratchTarget | None = None
        for pattern in self.keyspace.patterns:
            diff.scope(pattern)

    def scope_of(self, key: bytes) -> ScopeDiff:
        found = self.keyspace.matching(key)
        return self.diff.scope(self.keyspace.patterns[found[0] if found else 0])

    def is_volatile(self, key: bytes) -> bool:
        return self.volatile is not None and bool(self.volatile.matching(key))

    def check(self, batch: list[Record]) -> None:
        """Sort one batch of the set's keys into kept, changed, missing, expired."""
        args: list[Any] = []
        for rec in batch:
            args += [hashlib.sha1(rec.payload).hexdigest(), rec.type_code]
        now_ms, statuses = self._check(keys=[r.key for r in batch], args=args)
        unsure: list[Record] = []
        for rec, status in zip(batch, bytes(statuses), strict=True):
            scope = self.scope_of(rec.key)
            if status == ord("1"):
                scope.count("kept_unchanged")
            elif status == ord("0"):
                expired = 0 < rec.expire_at_ms <= int(now_ms)
                scope.count("expired" if expired else "missing", _ident(rec.key))
            elif status == ord("3"):
                scope.count("changed", _ident(rec.key))
            else:
                unsure.append(rec)
        if unsure:
            self._compare_logically(unsure)

    def _scratch_target(self) -> ScratchTarget:
        if self._scratch is None:
            section = _section(self.settings)
            url = self.settings.redis_url()
            self._scratch = self._stack.enter_context(
                scratch_target(
                    url,
                    source_db=stores.database_index(url),
                    timeout=section.connect_timeout,
                    purpose="content compare",
                )
            )
        return self._scratch

    def _compare_logically(self, batch: list[Record]) -> None:
        """Keys whose payload bytes differ: restore the set's copy aside, compare digests."""
        target = self._scratch_target()
        copies = [target.prefix + rec.key for rec in batch]
        pipe = target.client.pipeline(transaction=False)
        for copy, rec in zip(copies, batch, strict=True):
            pipe.restore(copy, 0, rec.payload, replace=True)
        try:
            pipe.execute()
        except redis.ResponseError as exc:
            raise CheckFailed(
                f"this Redis cannot read a payload of the backup: {stores.first_line(exc)}"
            ) from None
        try:
            expected = self._digest(keys=copies, client=target.client)
        finally:
            target.client.unlink(*copies)
        now = self._digest(keys=[rec.key for rec in batch])
        for rec, want, have in zip(batch, expected, now, strict=True):
            scope = self.scope_of(rec.key)
            if not have:
                scope.count("missing", _ident(rec.key))  # deleted since the first look
            elif want == have:
                scope.count("kept_unchanged")
            else:
                scope.count("changed", _ident(rec.key))

    def count_added(self) -> None:
        """Live keys of the keyspace that the set does not hold."""
        self.seen.freeze()
        pattern_set = self.keyspace
        for _cursor, page in stores.scan_pages(self.client, pattern_set.match, self.batch_size):
            keys = [
                k
                for k in dict.fromkeys(page)
                if pattern_set.wanted(k) and k != self.version_key and not self.is_volatile(k)
            ]
            for key, known in zip(keys, self.seen.contains(keys), strict=True):
                if not known:
                    self.scope_of(key).count("added", _ident(key))


def compare_redis(settings: Settings, set_dir: Path, entry: StoreBackup) -> ContentDiff:
    """Compare the live Redis with the set's dump file, key by key, scope by pattern.

    ``kept_unchanged``: same type and value (byte-equal payload, else an equal logical
    digest); ``changed``; ``missing``; ``expired`` (gone, and its TTL has run out);
    ``volatile`` (matches ``redis.volatile_patterns``: not compared); ``added``: live keys
    matching the set's patterns that the set does not hold. A key matched by several
    patterns counts under the first. Keys are read one batch at a time; a key written
    during the comparison may count either way.
    """
    section = _section(settings)
    started = time.monotonic()
    path = checked_file(set_dir, entry, dump_path(set_dir, entry).name)
    reader = DumpReader(path)
    patterns = list(reader.meta.get("patterns") or entry.extra.get("patterns") or ["*"])
    diff = ContentDiff("redis", set_dir.name)
    client = stores.connect(
        settings.redis_url(),
        purpose="content compare",
        timeout=section.connect_timeout,
        source=f"${section.url_env}",
    )
    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        stack.callback(reader.close)
        comparison = _Comparison(settings, client, diff, patterns, stack)
        try:
            batch: list[Record] = []
            size = 0
            for rec in reader.records():
                if rec.key == comparison.version_key:
                    continue
                comparison.seen.add(rec.key)
                if comparison.is_volatile(rec.key):
                    comparison.scope_of(rec.key).count("volatile")
                    continue
                batch.append(rec)
                size += len(rec.payload)
                if len(batch) >= comparison.batch_size or size >= BATCH_BYTES:
                    comparison.check(batch)
                    batch, size = [], 0
            if batch:
                comparison.check(batch)
            comparison.count_added()
        except redis.RedisError as exc:
            raise stores.infra_error(client, exc, "comparing keys with the backup") from None
    diff.seconds = time.monotonic() - started
    return diff
