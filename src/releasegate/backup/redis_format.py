"""The Redis dump file (``redis.rgdump``): its layout, a streaming writer and a checking reader.

The file is a header followed by a zlib stream of records::

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
:func:`~releasegate.backup.redis_restore.restore_file` reads the whole file through once
before it writes anything.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from releasegate.errors import CheckFailed

FILE_NAME = "redis.rgdump"
MAGIC = b"RGREDIS\n"
FORMAT_VERSION = 1
FLAG_ZLIB = 0x1

TYPE_CODES = {"string": 0, "hash": 1, "list": 2, "set": 3, "zset": 4, "stream": 5}
TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()} | {255: "other"}

# Bytes of DUMP payloads one export call returns at most (a single larger key still goes).
BATCH_BYTES = 16 << 20
_IO_CHUNK = 1 << 20

_HEADER = struct.Struct(">8sHHI")
_KEY_LEN = struct.Struct(">I")
KEY_HEAD = struct.Struct(">xI")  # tag (skipped), key length
VALUE_HEAD = struct.Struct(">BqI")  # type, expire_at, payload length
_TRAILER = struct.Struct(">QI")


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
        self.add_raw(key, VALUE_HEAD.pack(type_code, expire_at_ms, len(payload)) + payload)

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
        unpack_key = KEY_HEAD.unpack_from
        unpack_value = VALUE_HEAD.unpack_from
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
