"""Keeping two key layouts in step: the batched Lua work behind the expand phases.

Change detection is by **digest**. Every copy writes, in the same atomic Lua call, one
field of the move's tracking hash: ``key suffix -> d(old) + d(new)``, where ``d`` is the
first 64 bits of SHA-1 over the value and its absolute expiry (``PEXPIRETIME``). A later
pass recomputes ``d`` server-side for every key of a layout and hands to Python only the
keys whose digest differs from the recorded one (created, changed, TTL changed), so its
cost is one server-side read of each key plus the work on the changed ones only.
Deletions are found by walking the tracking hash (``HSCAN``) and checking which old keys
are gone. Writes are compare-and-set on the value Python computed the new value from: a
key changed in between is read again and retried, never overwritten with a stale value
(an expiry changed in between makes the digests differ: the next pass fixes the twin). A
pass may also take only the keys given (those a :mod:`.watch` watcher saw written).
Copies keep the absolute expiry (``SET ... PXAT``): both twins expire together.

Two Lua calls stay in flight on a connection of their own (read page *k+1* while Python
transforms page *k* and Redis writes page *k-1*), as in the migration helpers.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from releasegate.migrations.redis.checkpoint import StepStats
from releasegate.migrations.redis.moves import JsonTransform
from releasegate.stores import redis as stores

_DIGEST = """
-- 64 bits of SHA-1 over a value and its expiry time (text of PEXPIRETIME, -1: none).
local function digest(value, at)
  return string.sub(redis.sha1hex(value .. '|' .. at), 1, 16)
end
local function digest_of(value, key)
  return digest(value, tostring(redis.call('PEXPIRETIME', key)))
end
-- MGET (or HMGET of hash h) of many keys, 500 at a time: one call per chunk, not per key.
local function mget(list, h)
  local out, first = {}, 1
  while first <= #list do
    local last = math.min(first + 499, #list)
    local got
    if h then
      got = redis.call('HMGET', h, unpack(list, first, last))
    else
      got = redis.call('MGET', unpack(list, first, last))
    end
    for i = first, last do out[i] = got[i - first + 1] end
    first = last + 1
  end
  return out
end
-- One command over many arguments (HSET or HDEL of hash h), ``step`` at a time.
local function chunked(cmd, h, list, step)
  local first = 1
  while first <= #list do
    local last = math.min(first + step - 1, #list)
    redis.call(cmd, h, unpack(list, first, last))
    first = last + 1
  end
end
"""

# Lua: the keys of one page (a SCAN page, or the keys given) whose digest differs from the
# one recorded at ``offset`` of their tracking field, with their values and expiry times.
# KEYS: tracking hash, then the keys in 'keys' mode. ARGV: mode ('scan'/'keys'), cursor,
# match, count, prefix length, offset (1: old half, 17: new half).
# Returns {next cursor, records, unchanged}; a record is (key length u32, value length i32:
# -1 gone, -2 not a string, expiry length u32, tracking length u32; key; value; expiry
# time as text; tracking field or nothing); gone and other keys have only their key.
_READ_LUA = (
    _DIGEST
    + """
local keys, cursor = {}, '0'
if ARGV[1] == 'scan' then
  local page = redis.call('SCAN', ARGV[2], 'MATCH', ARGV[3], 'COUNT', ARGV[4])
  cursor, keys = page[1], page[2]
else
  for i = 2, #KEYS do keys[#keys + 1] = KEYS[i] end
end
local plen, off = tonumber(ARGV[5]), tonumber(ARGV[6])
local suffixes = {}
for i, key in ipairs(keys) do suffixes[i] = string.sub(key, plen + 1) end
local values, tracked = mget(keys), mget(suffixes, KEYS[1])
local parts, unchanged = {}, 0
for i, key in ipairs(keys) do
  local value = values[i]
  if value then
    local at = tostring(redis.call('PEXPIRETIME', key))
    -- An untracked key needs no digest here: Python computes the one to record.
    if tracked[i] and string.sub(tracked[i], off, off + 15) == digest(value, at) then
      unchanged = unchanged + 1
    else
      local t = tracked[i] or ''
      parts[#parts + 1] = struct.pack('>I4i4I4I4', #key, #value, #at, #t) .. key .. value .. at .. t
    end
  else
    local gone = redis.call('EXISTS', key) == 0
    parts[#parts + 1] = struct.pack('>I4i4I4I4', #key, gone and -1 or -2, 0, 0) .. key
  end
end
return {cursor, table.concat(parts), unchanged}
"""
)

# Lua: write one page of transformed values, compare-and-set on the source value the new
# values were computed from (an expiry changed meanwhile gives a digest that differs, so
# the next pass writes that key again). KEYS: tracking hash, then (source, target) pairs.
# ARGV: mode ('copy': keep the source and record the pair; 'back': delete the source and
# its record), prefix length of the sources, prefer-target flag ('1': leave a target
# someone else changed), then per pair: expected source value, its expiry time (ms, -1:
# none), the record to keep (source digest + target digest), new value, and the digest
# the target had when this pass last wrote it ('': not tracked). Only the phases, under
# the release lock, write tracking hashes: what the read saw of them still holds.
# Returns {new, changed, gone, conflicts, raced indexes, left alone}.
_WRITE_LUA = (
    _DIGEST
    + """
local function set_get(key, value, at)
  if at > 0 then return redis.call('SET', key, value, 'PXAT', at, 'GET') end
  return redis.call('SET', key, value, 'GET')
end
local mode, plen, prefer = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local n = (#KEYS - 1) / 2
local sources, suffixes = {}, {}
for i = 1, n do
  sources[i] = KEYS[2 * i]
  suffixes[i] = string.sub(sources[i], plen + 1)
end
local currents = mget(sources)
local new, changed, gone, conflicts, left = 0, 0, 0, 0, 0
local raced, hset, hdel = {}, {}, {}
for i = 1, n do
  local src, dst, a = sources[i], KEYS[2 * i + 1], 5 * i - 1
  local current, tracked, at = currents[i], ARGV[a + 4] ~= '', tonumber(ARGV[a + 1])
  if not current then
    gone = gone + 1
  elseif current ~= ARGV[a] then
    raced[#raced + 1] = i
  else
    -- Was the target changed by someone else since this pass last wrote it? Untracked
    -- targets, the common case, are checked by the write itself (SET ... GET).
    local touched, written = false, false
    if tracked then
      local now = redis.pcall('GET', dst)
      if type(now) == 'string' then
        touched = ARGV[a + 4] ~= digest_of(now, dst)
      else
        touched = redis.call('EXISTS', dst) == 1
      end
    elseif prefer == '1' then
      touched = redis.call('EXISTS', dst) == 1
    else
      local ok, was = pcall(set_get, dst, ARGV[a + 3], at)
      if not ok then  -- another type under the target name: replaced
        redis.call('DEL', dst)
        set_get(dst, ARGV[a + 3], at)
      end
      touched, written = not ok or was ~= false, true
    end
    if touched then conflicts = conflicts + 1 end
    if touched and prefer == '1' then
      left = left + 1
    else
      if not written then set_get(dst, ARGV[a + 3], at) end
      if mode == 'copy' then
        hset[#hset + 1] = suffixes[i]
        hset[#hset + 1] = ARGV[a + 2]
      else
        redis.call('DEL', src)
        hdel[#hdel + 1] = suffixes[i]
      end
      if tracked then changed = changed + 1 else new = new + 1 end
    end
  end
end
chunked('HSET', KEYS[1], hset, 1000)
chunked('HDEL', KEYS[1], hdel, 500)
return {new, changed, gone, conflicts, raced, left}
"""
)

# Lua: for the pairs whose old key is gone, the copy goes too (unless someone else changed
# it and prefer-target is set), and the record. Over one HSCAN page of the tracking hash,
# or over the suffixes given. KEYS: tracking hash. ARGV: cursor ('' : the suffixes given),
# count, old prefix, new prefix, prefer-target flag, then the suffixes.
# Returns {next cursor, deleted, conflicts}.
_DELETED_LUA = (
    _DIGEST
    + """
local cursor, suffixes, records = '0', {}, {}
if ARGV[1] ~= '' then
  local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
  cursor = page[1]
  for i = 1, #page[2], 2 do
    suffixes[#suffixes + 1] = page[2][i]
    records[#records + 1] = page[2][i + 1]
  end
else
  for i = 6, #ARGV do suffixes[#suffixes + 1] = ARGV[i] end
  records = mget(suffixes, KEYS[1])
end
local olds = {}
for j = 1, #suffixes do olds[j] = ARGV[3] .. suffixes[j] end
local values = mget(olds)
local deleted, conflicts = 0, 0
for j = 1, #olds do
  local suffix, tracked = suffixes[j], records[j]
  if tracked and not values[j] and redis.call('EXISTS', olds[j]) == 0 then
    local dst = ARGV[4] .. suffix
    local now = redis.pcall('GET', dst)
    local touched = type(now) == 'string' and string.sub(tracked, 17, 32) ~= digest_of(now, dst)
    if touched then conflicts = conflicts + 1 end
    if not (touched and ARGV[5] == '1') then
      deleted = deleted + redis.call('DEL', dst)
    end
    redis.call('HDEL', KEYS[1], suffix)
  end
end
return {cursor, deleted, conflicts}
"""
)

# Lua: one HSCAN page of a tracking hash, removing the copies. KEYS: tracking hash.
# ARGV: cursor, count, old prefix, new prefix, mode: 'copies' removes every copy; 'carry'
# removes copies still as written, and for copies deleted since (by the new version)
# deletes the old key too, unless it changed since the last catch-up (a conflict, kept).
# Returns {next cursor, copies removed, old keys deleted, conflicts, copies changed since}.
_UNCOPY_LUA = (
    _DIGEST
    + """
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local items = page[2]
local removed, old_deleted, conflicts, changed = 0, 0, 0, 0
for i = 1, #items, 2 do
  local suffix, tracked = items[i], items[i + 1]
  local dst = ARGV[4] .. suffix
  if ARGV[5] == 'copies' then
    removed = removed + redis.call('DEL', dst)
    redis.call('HDEL', KEYS[1], suffix)
  else
    local now = redis.pcall('GET', dst)
    if type(now) == 'string' then
      if string.sub(tracked, 17, 32) == digest_of(now, dst) then
        removed = removed + redis.call('DEL', dst)
        redis.call('HDEL', KEYS[1], suffix)
      else
        changed = changed + 1  -- changed after the scan passed it: carried back next pass
      end
    else
      local src = ARGV[3] .. suffix
      local old = redis.pcall('GET', src)
      if type(old) == 'string' then
        if string.sub(tracked, 1, 16) == digest_of(old, src) then
          old_deleted = old_deleted + redis.call('DEL', src)
        else
          conflicts = conflicts + 1
        end
      end
      redis.call('HDEL', KEYS[1], suffix)
    end
  end
end
return {page[1], removed, old_deleted, conflicts, changed}
"""
)

_HEAD = struct.Struct(">IiII")
_DECODE = json.JSONDecoder().decode
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass
class MoveStats(StepStats):
    """What one phase did to one move; ``changed`` counts every key written."""

    copied: int = 0  # new twins written
    updated: int = 0  # twins rewritten because their source changed
    deleted: int = 0  # twins deleted because their source was deleted
    carried_back: int = 0  # new-layout values written back to the old layout
    removed: int = 0  # copies removed (undo, or carried back)
    old_deleted: int = 0  # old keys deleted (contract, or deleted by the new version)


ProgressFn = Callable[[MoveStats], None]


@dataclass
class Layout:
    """One direction of a move: scan ``pattern``, strip ``prefix``, write ``other_prefix``."""

    tracking: str
    pattern: str
    prefix: bytes
    other_prefix: bytes
    fn: JsonTransform
    back: bool = False  # carry back: the source is the new layout
    retries: int = 3
    raced_keys: list[bytes] = field(default_factory=list)


class Syncer:
    """Runs the Lua calls of the phases over one client."""

    def __init__(
        self, client: redis.Redis, batch_size: int, on_progress: ProgressFn | None = None
    ) -> None:
        self.client = client
        self.batch_size = batch_size
        self.on_progress = on_progress
        # Pipelined passes send EVALSHA themselves; other calls go through Script objects,
        # which load the script again should the server have lost it (a restart).
        self._read = client.register_script(_READ_LUA)
        self._write = client.register_script(_WRITE_LUA)
        self.read_sha = str(client.script_load(_READ_LUA)).encode()
        self.write_sha = str(client.script_load(_WRITE_LUA)).encode()
        self._deleted = client.register_script(_DELETED_LUA)
        self._uncopy = client.register_script(_UNCOPY_LUA)

    def _progress(self, stats: MoveStats) -> None:
        stats.batches += 1
        if self.on_progress is not None:
            self.on_progress(stats)

    # -- copy (or carry back) what differs --

    def copy_changed(
        self,
        layout: Layout,
        stats: MoveStats,
        *,
        prefer_target: bool,
        keys: list[bytes] | None = None,
    ) -> int:
        """Write every key of ``layout.pattern`` (or of ``keys``) whose digest differs, then
        retry the keys that raced; returns the keys written (0: the layouts agree)."""
        flag = b"1" if prefer_target else b"0"
        if keys is None:
            written = self._pass(layout, stats, flag)
        else:
            written = 0
            for first in range(0, len(keys), self.batch_size):
                chunk = keys[first : first + self.batch_size]
                written += self._keys(layout, stats, chunk, flag)
        for _attempt in range(layout.retries):
            raced, layout.raced_keys = layout.raced_keys, []
            if not raced:
                break
            stats.raced += len(raced)
            written += self._keys(layout, stats, raced, flag)
        written += len(layout.raced_keys)  # still racing: the next pass takes them
        layout.raced_keys = []
        return written

    def _keys(self, layout: Layout, stats: MoveStats, keys: list[bytes], flag: bytes) -> int:
        """Read, transform and write the given keys (one read, one write call)."""
        offset = 17 if layout.back else 1
        args: list[Any] = ["keys", 0, "", 0, len(layout.prefix), offset]
        reply = self._read(keys=[layout.tracking, *keys], args=args)
        stats.scanned += int(reply[2])
        stats.unchanged += int(reply[2])
        pairs, values = self._transform(layout, stats, bytes(reply[1]))
        if not pairs:
            return 0
        written = self._write(
            keys=[layout.tracking, *pairs], args=self._write_args(layout, values, flag)
        )
        return self._apply(layout, stats, written, pairs)

    def _write_args(self, layout: Layout, values: list[bytes], flag: bytes) -> list[Any]:
        mode = b"back" if layout.back else b"copy"
        return [mode, b"%d" % len(layout.prefix), flag, *values]

    def _read_cmd(self, layout: Layout, cursor: bytes) -> bytes:
        return stores.pack_command(
            [
                b"EVALSHA",
                self.read_sha,
                b"1",
                layout.tracking.encode(),
                b"scan",
                cursor,
                layout.pattern.encode(),
                b"%d" % self.batch_size,
                b"%d" % len(layout.prefix),
                b"17" if layout.back else b"1",
            ]
        )

    def _write_cmd(
        self, layout: Layout, pairs: list[bytes], values: list[bytes], flag: bytes
    ) -> bytes:
        head = [b"EVALSHA", self.write_sha, b"%d" % (1 + len(pairs)), layout.tracking.encode()]
        return stores.pack_command([*head, *pairs, *self._write_args(layout, values, flag)])

    def _transform(
        self, layout: Layout, stats: MoveStats, blob: bytes
    ) -> tuple[list[bytes], list[bytes]]:
        """(source/target pairs, write arguments) of one page's records: per pair the
        source value and expiry it was computed from, the record to keep, the new value and
        the digest its target had when last written."""
        pairs: list[bytes] = []
        args: list[bytes] = []
        offset, end = 0, len(blob)
        plen, other = len(layout.prefix), layout.other_prefix
        fn = layout.fn
        size = _HEAD.size
        while offset < end:
            key_len, value_len, at_len, tracked_len = _HEAD.unpack_from(blob, offset)
            offset += size
            key = blob[offset : offset + key_len]
            offset += key_len
            stats.scanned += 1
            if value_len < 0:
                if value_len == -1:
                    stats.gone += 1
                else:
                    stats.invalid += 1
                    _note(stats, key)
                continue
            raw = blob[offset : offset + value_len]
            offset += value_len
            at = blob[offset : offset + at_len]
            offset += at_len
            tracked = blob[offset : offset + tracked_len]
            offset += tracked_len
            # The digest the target had when last written: its half of the record.
            target_digest = (tracked[:16] if layout.back else tracked[16:]) if tracked else b""
            try:
                value = _DECODE(raw.decode())
            except (json.JSONDecodeError, UnicodeDecodeError):
                value = None
            result = fn(value) if isinstance(value, dict) else None
            if not isinstance(result, dict):
                stats.invalid += 1
                _note(stats, key)
                continue
            new = _ENCODE(result).encode()
            pairs += (key, other + key[plen:])
            args += (raw, at, _digest(raw, at) + _digest(new, at), new, target_digest)
        return pairs, args

    def _apply(self, layout: Layout, stats: MoveStats, reply: Any, pairs: list[bytes]) -> int:
        new, changed, gone, conflicts = (int(x) for x in reply[:4])
        if layout.back:
            stats.carried_back += new + changed
            stats.removed += new + changed
        else:
            stats.copied += new
            stats.updated += changed
        stats.changed += new + changed
        stats.gone += gone
        stats.conflicts += conflicts
        for i in reply[4]:
            layout.raced_keys.append(pairs[2 * (int(i) - 1)])
        self._progress(stats)
        return new + changed

    def _pass(self, layout: Layout, stats: MoveStats, flag: bytes) -> int:
        conn: Any = self.client.connection_pool.get_connection()
        in_flight: deque[str] = deque()
        written = 0

        def send(kind: str, command: bytes) -> None:
            conn.send_packed_command([command], check_health=False)
            in_flight.append(kind)

        def receive(kind: str) -> Any:
            assert in_flight.popleft() == kind
            return conn.read_response()

        try:
            send("read", self._read_cmd(layout, b"0"))
            writing: list[bytes] | None = None
            while True:
                cursor, blob, unchanged = receive("read")
                cursor = bytes(cursor)
                if cursor != b"0":
                    send("read", self._read_cmd(layout, cursor))  # Redis reads ahead
                stats.scanned += int(unchanged)
                stats.unchanged += int(unchanged)
                pairs, values = self._transform(layout, stats, bytes(blob))
                if writing is not None:
                    written += self._apply(layout, stats, receive("write"), writing)
                    writing = None
                if pairs:
                    send("write", self._write_cmd(layout, pairs, values, flag))
                    writing = pairs
                if cursor == b"0":
                    break
            if writing is not None:
                written += self._apply(layout, stats, receive("write"), writing)
        finally:
            if in_flight:  # interrupted: replies are pending, the connection is unusable
                conn.disconnect()
            self.client.connection_pool.release(conn)
        return written

    # -- walks of a tracking hash --

    def _hscan(self, script: Any, tracking: str, args: list[Any]) -> Iterator[list[Any]]:
        cursor: Any = 0
        while True:
            reply = list(script(keys=[tracking], args=[cursor, self.batch_size, *args]))
            yield reply
            cursor = reply[0]
            if bytes(cursor) == b"0":
                return

    def delete_orphans(
        self,
        tracking: str,
        old_prefix: str,
        new_prefix: str,
        stats: MoveStats,
        *,
        prefer: bool,
        suffixes: list[bytes] | None = None,
    ) -> int:
        """Delete the copies whose old key is gone (of every tracked pair, or of the
        ``suffixes`` given); returns how many."""
        deleted = 0
        flag = "1" if prefer else "0"

        def account(reply: list[Any]) -> None:
            nonlocal deleted
            deleted += int(reply[1])
            stats.conflicts += int(reply[2])
            stats.deleted += int(reply[1])
            stats.changed += int(reply[1])
            self._progress(stats)

        if suffixes is None:
            for reply in self._hscan(self._deleted, tracking, [old_prefix, new_prefix, flag]):
                account(reply)
            return deleted
        for first in range(0, len(suffixes), self.batch_size):
            chunk = suffixes[first : first + self.batch_size]
            args: list[Any] = ["", 0, old_prefix, new_prefix, flag, *chunk]
            account(list(self._deleted(keys=[tracking], args=args)))
        return deleted

    def remove_copies(
        self, tracking: str, old_prefix: str, new_prefix: str, stats: MoveStats, *, carry: bool
    ) -> int:
        """Remove the copies (all, or with ``carry`` those unchanged since written, and the
        old keys of copies the new version deleted); returns copies changed meanwhile."""
        mode = "carry" if carry else "copies"
        changed_since = 0
        for reply in self._hscan(self._uncopy, tracking, [old_prefix, new_prefix, mode]):
            stats.removed += int(reply[1])
            stats.old_deleted += int(reply[2])
            stats.conflicts += int(reply[3])
            changed_since += int(reply[4])
            self._progress(stats)
        return changed_since

    def delete_layout(self, pattern: str, stats: MoveStats) -> None:
        """UNLINK every key matching ``pattern``, a SCAN page at a time."""
        for _cursor, keys in stores.scan_pages(self.client, pattern, self.batch_size):
            if keys:
                stats.old_deleted += int(self.client.unlink(*keys))
                self._progress(stats)


def _digest(value: bytes, at: bytes) -> bytes:
    """The Lua ``digest``: 64 bits of SHA-1 over the value and its expiry time, in hex."""
    return hashlib.sha1(value + b"|" + at, usedforsecurity=False).hexdigest()[:16].encode()


def _note(stats: StepStats, key: bytes) -> None:
    if len(stats.examples) < 3:
        stats.examples.append(key[:120].decode(errors="replace"))
