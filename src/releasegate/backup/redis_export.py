"""Export of Redis keys into a dump file: ``SCAN`` pages turned into file records by Lua.

Works on managed Redis: no ``BGSAVE``, no access to the server's filesystem, only
``SCAN``, ``DUMP`` and a small Lua script. The keyspace is read page by page and streamed
into the file, so the exporter's memory does not grow with the keyspace.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from releasegate.backup.redis_counts import KeyCounts
from releasegate.backup.redis_format import BATCH_BYTES, KEY_HEAD, VALUE_HEAD, DumpWriter
from releasegate.stores import redis as stores

# Export one batch of keys: per key a presence byte, then type, absolute expiry (ms, server
# clock) and the DUMP payload, concatenated into one reply so the client parses one string.
_EXPORT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(ARGV[1])
local codes = {string=0, hash=1, list=2, set=3, zset=4, stream=5}
local parts = {}
local size = 0
local done = 0
for i, key in ipairs(KEYS) do
  local payload = redis.call('DUMP', key)
  if payload then
    local kind = redis.call('TYPE', key)['ok']
    local pttl = redis.call('PTTL', key)
    local expire_at = 0
    if pttl > 0 then expire_at = now + pttl end
    parts[#parts + 1] = struct.pack('>BBi8I4', 1, codes[kind] or 255, expire_at, #payload)
    parts[#parts + 1] = payload
    size = size + #payload + 14
  else
    parts[#parts + 1] = '\\0'
  end
  done = i
  if size >= budget then break end
end
return {now, done, table.concat(parts)}
"""

# Export one SCAN page: its keys as file records ("K", key length, key, type, absolute
# expiry in ms by the server clock, payload length, DUMP payload) in one string. Keys past
# the byte budget are returned by name, for separate calls. ARGV: cursor, match, count,
# budget. Returns {next cursor, records, keys gone before DUMP, keys left}.
_EXPORT_PAGE_LUA = """
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(ARGV[4])
local codes = {string=0, hash=1, list=2, set=3, zset=4, stream=5}
local parts, left = {}, {}
local size, gone = 0, 0
for _, key in ipairs(page[2]) do
  if size >= budget then
    left[#left + 1] = key
  else
    local payload = redis.call('DUMP', key)
    if payload then
      local kind = redis.call('TYPE', key)['ok']
      local pttl = redis.call('PTTL', key)
      local expire_at = 0
      if pttl > 0 then expire_at = now + pttl end
      parts[#parts + 1] = struct.pack('>BI4', 75, #key)
      parts[#parts + 1] = key
      parts[#parts + 1] = struct.pack('>Bi8I4', codes[kind] or 255, expire_at, #payload)
      parts[#parts + 1] = payload
      size = size + #payload + #key + 18
    else
      gone = gone + 1
    end
  end
end
return {page[1], table.concat(parts), gone, left}
"""


@dataclass
class ExportResult:
    path: Path
    keys: int
    vanished: int  # listed by SCAN, deleted before DUMP
    bytes: int
    seconds: float
    counts: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": self.path.name}


def export_keys(
    client: redis.Redis,
    path: Path,
    patterns: Sequence[str],
    *,
    batch_size: int = 1000,
    meta: dict[str, Any] | None = None,
    compress: bool = True,
    batch_bytes: int = BATCH_BYTES,
) -> ExportResult:
    """Stream every key matching ``patterns`` into the dump file at ``path``.

    One pass per pattern. Each Lua call reads one ``SCAN`` page (``batch_size``) and
    returns the page as file records (key, type, expiry, DUMP payload) in one string, which
    goes to the file as is; the call for the next page is sent before this one is handled,
    so Redis and the exporter work at the same time. A key matched by an earlier pattern
    is left out, so it is exported once. Memory is bounded by two pages (and
    ``batch_bytes`` of payload per call: keys past it are dumped by separate calls).
    """
    started = time.monotonic()
    pattern_set = stores.PatternSet(patterns)
    counts = KeyCounts(pattern_set.patterns)
    writer = DumpWriter(path, {**(meta or {}), "patterns": pattern_set.patterns}, compress=compress)
    vanished = 0
    page_sha = str(client.script_load(_EXPORT_PAGE_LUA)).encode()
    dump_keys = client.register_script(_EXPORT_LUA)
    conn: Any = client.connection_pool.get_connection()
    in_flight = 0

    def request(cursor: int, pattern: str) -> None:
        nonlocal in_flight
        args = [b"%d" % cursor, pattern.encode(), b"%d" % batch_size, b"%d" % batch_bytes]
        conn.send_packed_command([stores.pack_command([b"EVALSHA", page_sha, b"0", *args])])
        in_flight += 1

    def reply() -> Any:
        nonlocal in_flight
        in_flight -= 1
        return conn.read_response()

    try:
        for index, pattern in enumerate(pattern_set.patterns):
            earlier = pattern_set.regexes[:index]
            request(0, pattern)
            while in_flight:
                next_cursor, blob, gone, left = reply()
                if int(next_cursor):
                    request(int(next_cursor), pattern)  # Redis reads ahead meanwhile
                vanished += int(gone)
                _add_page(writer, counts, bytes(blob), earlier)
                if left:
                    vanished += _export_leftovers(
                        dump_keys, writer, counts, list(left), batch_bytes
                    )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if in_flight:  # interrupted with replies pending: the connection is unusable
            conn.disconnect()
        client.connection_pool.release(conn)
    return ExportResult(
        path,
        writer.records,
        vanished,
        path.stat().st_size,
        time.monotonic() - started,
        counts.to_dict(),
    )


def _add_page(
    writer: DumpWriter, counts: KeyCounts, blob: bytes, earlier: Sequence[re.Pattern[bytes]]
) -> None:
    """Count the records of one page and write them, less keys an earlier pattern took."""
    unpack_key = KEY_HEAD.unpack_from
    unpack_value = VALUE_HEAD.unpack_from
    offset, size = 0, len(blob)
    kept: list[bytes] | None = None  # None: every record so far is kept
    n = 0
    while offset < size:
        key_end = offset + 5 + unpack_key(blob, offset)[0]
        key = blob[offset + 5 : key_end]
        code, expire_at, payload_len = unpack_value(blob, key_end)
        end = key_end + 13 + payload_len
        if earlier and any(rx.match(key) for rx in earlier):
            if kept is None:
                kept = [blob[:offset]]
        else:
            if kept is not None:
                kept.append(blob[offset:end])
            counts.add(key, code, expire_at > 0)
            n += 1
        offset = end
    writer.add_records(blob if kept is None else b"".join(kept), n)


def _export_leftovers(
    dump_keys: Any, writer: DumpWriter, counts: KeyCounts, keys: list[bytes], budget: int
) -> int:
    """Keys a page call left for lack of byte budget (big values): a few per call."""
    vanished = 0
    while keys:
        _now, done, blob = dump_keys(keys=keys, args=[budget])
        view = memoryview(blob)
        offset = 0
        for key in keys[: int(done)]:
            if view[offset] == 0:
                vanished += 1
                offset += 1
                continue
            _flag, code, expire_at, size = struct.unpack_from(">BBqI", view, offset)
            end = offset + 14 + size
            writer.add_raw(key, view[offset + 1 : end])
            counts.add(key, code, expire_at > 0)
            offset = end
        keys = keys[int(done) :]
    return vanished
