"""Redis restore points: a logical export (SCAN + DUMP) into one compact file.

Works on managed Redis: no ``BGSAVE``, no access to the server's filesystem, only
``SCAN``, ``DUMP``, ``RESTORE`` and a small Lua script. The keyspace is read page by page
and streamed into the file, so the exporter's memory does not grow with the keyspace.

The file (``redis.rgdump``) is a header followed by a zlib stream of records::

    header   magic  b"RGREDIS\\n"            8 bytes
             format version                 u16, big-endian (currently 1)
             flags                          u16; bit 0: the body is a zlib stream
             meta length                    u32
             meta                           JSON: patterns, created_at, server version,
                                            the data-migration version, ...
    body     records, each starting with a tag byte:
             b"K" key length u32 | key | type u8 | expire_at i64 | payload length u32 | payload
                  type: 0 string, 1 hash, 2 list, 3 set, 4 zset, 5 stream, 255 other;
                  expire_at: absolute unix time in ms (server clock), 0 = no TTL;
                  payload: the DUMP serialization (carries its own RDB version and CRC64)
             b"Z" record count u64 | CRC32 u32 of every byte before it (header and body,
                  uncompressed); the last record. Anything after it is an error.

A truncated or corrupted file fails the CRC, the zlib stream or the trailer check, and
:func:`restore_file` reads the whole file through once before it writes anything.

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
import io
import json
import os
import re
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import redis

from releasegate.backup.base import Difference, FileEntry, StoreBackup, set_file
from releasegate.config import RedisSection, Settings
from releasegate.errors import CheckFailed, ConfigError, InfraError, RollbackFailed, StateError
from releasegate.secrets import mask_url
from releasegate.stores import redis as stores

FILE_NAME = "redis.rgdump"
MAGIC = b"RGREDIS\n"
FORMAT_VERSION = 1
FLAG_ZLIB = 0x1
METHOD = "scan+dump"

TYPE_CODES = {"string": 0, "hash": 1, "list": 2, "set": 3, "zset": 4, "stream": 5}
TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()} | {255: "other"}

# Bytes of DUMP payloads one export call returns at most (a single larger key still goes).
BATCH_BYTES = 16 << 20
_IO_CHUNK = 1 << 20

_HEADER = struct.Struct(">8sHHI")
_KEY_LEN = struct.Struct(">I")
_KEY_HEAD = struct.Struct(">xI")  # tag (skipped), key length
_VALUE_HEAD = struct.Struct(">BqI")  # type, expire_at, payload length
_TRAILER = struct.Struct(">QI")

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

# Type and TTL presence of a batch of keys: two bytes per key (type code, has-TTL), or
# 0xFE when the key is gone.
_INSPECT_LUA = """
local codes = {string=0, hash=1, list=2, set=3, zset=4, stream=5}
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    out[i] = '\\254\\0'
  else
    local ttl = 0
    if redis.call('PTTL', key) > 0 then ttl = 1 end
    out[i] = string.char(codes[kind] or 255, ttl)
  end
end
return table.concat(out)
"""


# -- counts ---------------------------------------------------------------------------


@dataclass
class _Tally:
    keys: int = 0
    with_ttl: int = 0
    types: dict[str, int] = field(default_factory=dict)

    def add(self, type_name: str, has_ttl: bool) -> None:
        self.keys += 1
        self.with_ttl += has_ttl
        self.types[type_name] = self.types.get(type_name, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": self.keys,
            "with_ttl": self.with_ttl,
            "types": dict(sorted(self.types.items())),
        }


class KeyCounts:
    """Keys in total, per type, with a TTL, and the same per configured pattern.

    The dict form (:meth:`to_dict`) is what the manifest stores::

        {"keys": 3, "with_ttl": 1, "types": {"hash": 1, "string": 2},
         "patterns": {"sess:*": {"keys": 1, "with_ttl": 1, "types": {"string": 1}}, ...}}

    A key matched by several patterns counts once in the totals and once per pattern.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = list(dict.fromkeys(patterns))
        self.regexes = [stores.compile_glob(p) for p in self.patterns]
        self.total = _Tally()
        self.per_pattern = [_Tally() for _ in self.patterns]

    def add(self, key: bytes, type_code: int, has_ttl: bool) -> None:
        type_name = TYPE_NAMES.get(type_code, "other")
        self.total.add(type_name, has_ttl)
        if len(self.regexes) == 1:
            self.per_pattern[0].add(type_name, has_ttl)
            return
        for tally, rx in zip(self.per_pattern, self.regexes, strict=True):
            if rx.match(key):
                tally.add(type_name, has_ttl)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.total.to_dict(),
            "patterns": {
                p: t.to_dict() for p, t in zip(self.patterns, self.per_pattern, strict=True)
            },
        }


def _flatten(counts: dict[str, Any]) -> dict[str, int]:
    """Every figure of a counts dict under a readable name (the item of a Difference)."""
    flat: dict[str, int] = {}

    def one(prefix: str, tally: dict[str, Any]) -> None:
        flat[f"keys{prefix}"] = int(tally.get("keys", 0))
        flat[f"keys{prefix} with a TTL"] = int(tally.get("with_ttl", 0))
        for type_name, n in tally.get("types", {}).items():
            flat[f"keys{prefix} ({type_name})"] = int(n)

    one("", counts)
    for pattern, tally in counts.get("patterns", {}).items():
        one(f" {pattern}", tally)
    return flat


def compare_counts(expected: dict[str, Any], actual: dict[str, Any]) -> list[Difference]:
    """The figures that differ between two counts dicts (missing figures count as 0)."""
    want, have = _flatten(expected), _flatten(actual)
    return [
        Difference("redis", item, want.get(item, 0), have.get(item, 0))
        for item in sorted(set(want) | set(have))
        if want.get(item, 0) != have.get(item, 0)
    ]


def add_counts(a: dict[str, Any], b: dict[str, Any], sign: int = 1) -> dict[str, Any]:
    """``a + b`` (or ``a - b`` with ``sign=-1``) figure by figure, in the counts shape."""

    def one(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
        xt, yt = x.get("types", {}), y.get("types", {})
        types = {t: xt.get(t, 0) + sign * yt.get(t, 0) for t in sorted({*xt, *yt})}
        return {
            "keys": x.get("keys", 0) + sign * y.get("keys", 0),
            "with_ttl": x.get("with_ttl", 0) + sign * y.get("with_ttl", 0),
            "types": {t: n for t, n in types.items() if n},
        }

    result = one(a, b)
    ap, bp = a.get("patterns", {}), b.get("patterns", {})
    result["patterns"] = {p: one(ap.get(p, {}), bp.get(p, {})) for p in dict.fromkeys([*ap, *bp])}
    return result


def _inspect_pages(
    client: redis.Redis, pattern_set: stores.PatternSet, batch_size: int
) -> Iterator[tuple[list[bytes], bytes]]:
    """(keys, two bytes per key: type code and has-TTL) for every page of the keyspace."""
    inspect = client.register_script(_INSPECT_LUA)
    for _cursor, page in stores.scan_pages(client, pattern_set.match, batch_size):
        keys = [k for k in dict.fromkeys(page) if pattern_set.wanted(k)]
        if keys:
            yield keys, bytes(inspect(keys=keys))


def count_keys(
    client: redis.Redis,
    patterns: Sequence[str],
    *,
    batch_size: int = 1000,
    key_prefix: bytes = b"",
    exclude_prefixes: Sequence[bytes] = (),
) -> dict[str, Any]:
    """Live counts of the keys matching ``patterns`` (see :class:`KeyCounts`).

    ``key_prefix`` counts the keys stored under that prefix as if it were not there (a
    scratch copy restored under a prefix). Counts come from SCAN and are exact on a quiet
    keyspace; under concurrent writes they are a close estimate.
    """
    prefix_glob = stores.glob_escape(key_prefix.decode())
    pattern_set = stores.PatternSet([prefix_glob + p for p in patterns], exclude_prefixes)
    counts = KeyCounts(patterns)
    strip = len(key_prefix)
    for keys, info in _inspect_pages(client, pattern_set, batch_size):
        for i, key in enumerate(keys):
            code = info[2 * i]
            if code != 0xFE:
                counts.add(key[strip:], code, info[2 * i + 1] == 1)
    return counts.to_dict()


# -- the file format ------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One key of a dump file."""

    key: bytes
    type_code: int
    expire_at_ms: int  # absolute, server clock; 0 = no TTL
    payload: bytes

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type_code, "other")


def _corrupt(path: Path, why: str) -> CheckFailed:
    return CheckFailed(f"redis backup file {path.name} is corrupt or truncated: {why}")


class DumpWriter:
    """Writes a dump file record by record; :meth:`close` adds the trailer and fsyncs.

    Records are gathered into a 1 MiB buffer, then checksummed, compressed and written, so
    memory stays flat however many keys pass through.
    """

    def __init__(self, path: Path, meta: dict[str, Any], *, compress: bool = True) -> None:
        self.path = path
        self.records = 0
        self._crc = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._zlib = zlib.compressobj(1) if compress else None
        self._fh: BinaryIO = path.open("wb")
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, FLAG_ZLIB if compress else 0, len(meta_bytes))
        self._crc = zlib.crc32(header + meta_bytes)
        self._fh.write(header + meta_bytes)

    def add(self, key: bytes, type_code: int, expire_at_ms: int, payload: bytes) -> None:
        """Append one key."""
        self.add_raw(key, _VALUE_HEAD.pack(type_code, expire_at_ms, len(payload)) + payload)

    def add_raw(self, key: bytes, value: bytes | memoryview) -> None:
        """Append one key whose type/expiry/length/payload part is already packed."""
        part = b"K" + _KEY_LEN.pack(len(key)) + key
        self._buffer.append(part)
        self._buffer.append(bytes(value))
        self._buffered += len(part) + len(value)
        self.records += 1
        if self._buffered >= _IO_CHUNK:
            self._flush()

    def add_records(self, data: bytes, n: int) -> None:
        """Append ``n`` whole records already in the file's encoding (tag included)."""
        self._buffer.append(data)
        self._buffered += len(data)
        self.records += n
        if self._buffered >= _IO_CHUNK:
            self._flush()

    def _write(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._fh.write(self._zlib.compress(data) if self._zlib else data)

    def _flush(self) -> None:
        if self._buffer:
            self._write(b"".join(self._buffer))
            self._buffer.clear()
            self._buffered = 0

    def close(self) -> None:
        """Write the trailer, finish the stream and fsync the file."""
        self._flush()
        trailer = b"Z" + _TRAILER.pack(self.records, zlib.crc32(b"Z", self._crc) & 0xFFFFFFFF)
        # The CRC covers everything before the trailer's count: tag 'Z' included.
        self._fh.write(self._zlib.compress(trailer) + self._zlib.flush() if self._zlib else trailer)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        """Close and delete a file that will not be finished."""
        self._fh.close()
        self.path.unlink(missing_ok=True)


class _Inflate(io.RawIOBase):
    """A readable stream of the decompressed body of a dump file."""

    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self._fh = fh
        self._path = path
        self._z = zlib.decompressobj()
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            if self._z.eof:
                if self._z.unused_data or self._fh.read(1):
                    raise _corrupt(self._path, "data after the end of the compressed stream")
                return 0
            data = self._z.unconsumed_tail or self._fh.read(_IO_CHUNK)
            if not data:
                raise _corrupt(self._path, "the compressed stream ends early")
            try:
                self._pending = self._z.decompress(data, _IO_CHUNK)
            except zlib.error as exc:
                raise _corrupt(self._path, f"zlib: {exc}") from None
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class DumpReader:
    """Reads a dump file: :attr:`meta`, then :meth:`records`, checking CRC and trailer.

    Every problem (bad magic, unknown format version, truncation, a flipped bit) raises
    :class:`CheckFailed` naming the file; the check of the trailer happens when the last
    record has been read, so a consumer that must not act on a bad file reads it through
    once first (:func:`check_file`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = path.open("rb")
        head = self._fh.read(_HEADER.size)
        if len(head) < _HEADER.size or head[:8] != MAGIC:
            self._fh.close()
            raise _corrupt(path, "not a releasegate Redis dump (bad magic)")
        _magic, version, flags, meta_len = _HEADER.unpack(head)
        if version != FORMAT_VERSION:
            self._fh.close()
            raise CheckFailed(
                f"redis backup file {path.name} has format version {version};"
                f" this releasegate reads version {FORMAT_VERSION}"
            )
        meta_bytes = self._fh.read(meta_len)
        self._crc = zlib.crc32(head + meta_bytes)
        try:
            self.meta: dict[str, Any] = json.loads(meta_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._fh.close()
            raise _corrupt(path, "unreadable header") from None
        body: IO[bytes] = self._fh
        if flags & FLAG_ZLIB:
            body = io.BufferedReader(_Inflate(self._fh, path), _IO_CHUNK)
        self._body = body

    def _chunk(self) -> bytes:
        return self._body.read(_IO_CHUNK)

    def records(self) -> Iterator[Record]:
        """Every key in file order; raises at the end if the trailer does not check out.

        The body is read in 1 MiB chunks and parsed in place; the CRC is updated once per
        chunk over the bytes parsed from it.
        """
        buf = b""
        pos = 0
        crc = self._crc

        def need(n: int) -> bool:
            """Make ``buf[pos:pos + n]`` available; False at the end of the file."""
            nonlocal buf, pos, crc
            while len(buf) - pos < n:
                chunk = self._chunk()
                if not chunk:
                    return False
                crc = zlib.crc32(memoryview(buf)[:pos], crc)
                buf = buf[pos:] + chunk
                pos = 0
            return True

        count = 0
        unpack_key = _KEY_HEAD.unpack_from
        unpack_value = _VALUE_HEAD.unpack_from
        try:
            while True:
                if len(buf) - pos < 18 and not need(1):
                    raise _corrupt(self.path, "it ends without a trailer")
                tag = buf[pos]
                if tag == 0x5A:  # "Z": the trailer
                    if not need(1 + _TRAILER.size):
                        raise _corrupt(self.path, "the trailer is cut short")
                    crc = zlib.crc32(memoryview(buf)[: pos + 1], crc) & 0xFFFFFFFF
                    n, stored = _TRAILER.unpack_from(buf, pos + 1)
                    if stored != crc:
                        raise _corrupt(self.path, "checksum mismatch")
                    if n != count:
                        raise _corrupt(self.path, f"trailer says {n} keys, found {count}")
                    if len(buf) > pos + 1 + _TRAILER.size or self._chunk():
                        raise _corrupt(self.path, "data after the trailer")
                    return
                if tag != 0x4B:  # "K": a key
                    raise _corrupt(self.path, f"unknown record tag {bytes([tag])!r}")
                if len(buf) - pos < 5 and not need(5):
                    raise _corrupt(self.path, "it ends in the middle of a record")
                key_end = pos + 5 + unpack_key(buf, pos)[0]
                if len(buf) < key_end + 13 and not need(key_end + 13 - pos):
                    raise _corrupt(self.path, "it ends in the middle of a record")
                key_end = pos + 5 + unpack_key(buf, pos)[0]  # pos may have moved
                type_code, expire_at, payload_len = unpack_value(buf, key_end)
                end = key_end + 13 + payload_len
                if len(buf) < end:
                    if not need(end - pos):
                        raise _corrupt(self.path, "it ends in the middle of a record")
                    key_end = pos + 5 + unpack_key(buf, pos)[0]
                    end = key_end + 13 + payload_len
                count += 1
                yield Record(buf[pos + 5 : key_end], type_code, expire_at, buf[key_end + 13 : end])
                pos = end
        finally:
            self.close()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> DumpReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_file(path: Path) -> tuple[dict[str, Any], int]:
    """Read a dump file through: (meta, number of keys); :class:`CheckFailed` if damaged."""
    reader = DumpReader(path)
    n = sum(1 for _ in reader.records())
    return reader.meta, n


def file_counts(path: Path, patterns: Sequence[str] | None = None) -> dict[str, Any]:
    """Counts of the keys inside a dump file, offline (no Redis needed)."""
    reader = DumpReader(path)
    counts = KeyCounts(patterns or reader.meta.get("patterns") or ["*"])
    for rec in reader.records():
        counts.add(rec.key, rec.type_code, rec.expire_at_ms > 0)
    return counts.to_dict()


# -- export ---------------------------------------------------------------------------


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
    unpack_key = _KEY_HEAD.unpack_from
    unpack_value = _VALUE_HEAD.unpack_from
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


# -- restore --------------------------------------------------------------------------


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

_CLAIM_PREFIX = b"releasegate:verify:"
SCRATCH_TTL_FLOOR_MS = 3_600_000


@dataclass
class ScratchTarget:
    """Where a verification restores: an empty logical DB, or a key prefix in the same DB."""

    client: redis.Redis
    db: int | None
    prefix: bytes
    claim_key: bytes


def _databases(client: redis.Redis) -> int:
    try:
        reply: dict[Any, Any] = client.config_get("databases")
        return int(reply.get(b"databases") or reply.get("databases") or 16)
    except (redis.ResponseError, ValueError):
        return 16  # CONFIG is often disabled on managed Redis; 16 is the default


@contextmanager
def scratch_target(
    url: str, *, source_db: int, timeout: float, purpose: str = "backup verify"
) -> Iterator[ScratchTarget]:
    """Claim an empty logical DB on the server of ``url`` (highest index first), else a key
    prefix in the source DB; yield it; remove everything written there afterwards.

    A DB is claimed with ``SET NX`` of a marker key while it holds nothing else, so two
    verifications never share one. When only DB 0 exists (Redis Cluster, some managed
    offerings) the copy goes under ``releasegate:verify:<token>:`` in the source DB.
    """
    token = uuid.uuid4().hex[:12]
    claim = _CLAIM_PREFIX + f"claim:{token}".encode()
    base = stores.connect(url, purpose=purpose, timeout=timeout)
    chosen: ScratchTarget | None = None
    try:
        for db in range(_databases(base) - 1, 0, -1):
            if db == source_db:
                continue
            try:
                client = stores.connect(url, purpose=purpose, timeout=timeout, db=db)
            except InfraError:
                break  # the server has fewer databases than it said
            if client.dbsize() == 0 and client.set(claim, token, nx=True, ex=86_400):
                if client.dbsize() == 1:
                    chosen = ScratchTarget(client, db, b"", claim)
                    break
                client.delete(claim)
            client.close()
        if chosen is None:
            base.set(claim, token, ex=86_400)
            chosen = ScratchTarget(base, None, _CLAIM_PREFIX + f"{token}:".encode(), claim)
        yield chosen
    finally:
        if chosen is not None:
            _clean_scratch(chosen, token)
            if chosen.client is not base:
                chosen.client.close()
        base.close()


def _clean_scratch(target: ScratchTarget, token: str) -> None:
    client = target.client
    if target.db is not None:
        if client.get(target.claim_key) == token.encode():
            try:
                client.flushdb()
                return
            except redis.ResponseError:
                pass  # FLUSHDB renamed away: delete key by key below
        else:
            return  # someone else emptied or took the DB: nothing of ours is left there
    match = stores.glob_escape(target.prefix.decode()) + "*" if target.prefix else "*"
    for _cursor, page in stores.scan_pages(client, match, 1000):
        if page:
            client.unlink(*page)
    client.delete(target.claim_key)


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
