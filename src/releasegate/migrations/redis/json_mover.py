"""Pipelined JSON transforms of Redis string keys, in place or with a rename.

Two Lua calls are kept in flight on a connection of their own: Redis reads the next page
while Python transforms this one (see :class:`JsonMover`).
"""

from __future__ import annotations

import json
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis

from releasegate.migrations.redis.batch_scripts import MOVE_LUA, READ_LUA
from releasegate.migrations.redis.checkpoint import Checkpoint, StepStats
from releasegate.migrations.redis.json_fields import JsonFn
from releasegate.stores import redis as stores


class KeyHelpers(Protocol):
    """What a :class:`JsonMover` uses of :class:`~releasegate.migrations.redis.helpers.Helpers`."""

    client: redis.Redis
    batch_size: int
    protected: bytes
    retries: int
    checkpoint: Checkpoint
    move_script: Any

    def note_example(self, stats: StepStats, key: bytes) -> None: ...

    def account(self, stats: StepStats, reply: Sequence[Any]) -> int: ...


_KV_HEAD = struct.Struct(">Ii")
_DECODE = json.JSONDecoder().decode
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class JsonMover:
    """Pipelined passes of a JSON transform (with or without a rename).

    Two commands are kept in flight on a connection of its own: while Python decodes and
    transforms page *k*, Redis applies the atomic batch of page *k-1* and reads page *k+1*
    (one Lua call returns a SCAN page with its values as a single string). So the client
    and the server work at the same time, and each page costs one round trip.
    """

    def __init__(
        self,
        helpers: KeyHelpers,
        stats: StepStats,
        pattern: str,
        fn: JsonFn,
        rename: tuple[bytes, bytes] | None,
        is_done: Callable[[dict[str, Any]], bool] | None,
        overwrite: bool,
    ) -> None:
        self.h = helpers
        self.stats = stats
        self.pattern = pattern.encode()
        self.fn = fn
        self.rename = rename
        self.is_done = is_done
        self.flag = b"1" if overwrite else b"0"
        client = helpers.client
        self.read_sha = str(client.script_load(READ_LUA)).encode()
        self.move_sha = str(client.script_load(MOVE_LUA)).encode()

    # -- one page --

    def _read_cmd(self, cursor: int) -> bytes:
        count = b"%d" % self.h.batch_size
        return stores.pack_command(
            [b"EVALSHA", self.read_sha, b"0", b"%d" % cursor, self.pattern, count]
        )

    def _transform_page(self, blob: bytes) -> tuple[list[bytes], list[bytes]]:
        """(old/new key pairs, expected/new value pairs) of one page to write."""
        stats, h = self.stats, self.h
        pairs: list[bytes] = []
        values: list[bytes] = []
        offset, end = 0, len(blob)
        protected = h.protected
        while offset < end:
            key_len, value_len = _KV_HEAD.unpack_from(blob, offset)
            offset += 8
            key = blob[offset : offset + key_len]
            offset += key_len
            if value_len < 0:
                if key.startswith(protected):
                    continue
                stats.scanned += 1
                if value_len == -1:
                    stats.gone += 1
                else:
                    stats.invalid += 1
                    h.note_example(stats, key)
                continue
            raw = blob[offset : offset + value_len]
            offset += value_len
            if key.startswith(protected):
                continue
            stats.scanned += 1
            new_value = self._new_value(key, raw)
            if new_value is not None:
                pairs += (key, key if self.rename is None else self._new_key(key))
                values += (raw, new_value)
        return pairs, values

    def _new_key(self, key: bytes) -> bytes:
        assert self.rename is not None
        old, new = self.rename
        return new + key[len(old) :]

    def _new_value(self, key: bytes, raw: bytes) -> bytes | None:
        stats = self.stats
        try:
            value = _DECODE(raw.decode())
        except (json.JSONDecodeError, UnicodeDecodeError):
            value = None
        if not isinstance(value, dict):
            stats.invalid += 1
            self.h.note_example(stats, key)
            return None
        if self.is_done is not None and self.is_done(value):
            stats.unchanged += 1
            return None
        result = self.fn(value)
        if result is None or (self.rename is None and result == value):
            stats.unchanged += 1
            return None
        return _ENCODE(result).encode()

    def _write_cmd(
        self, pairs: list[bytes], values: list[bytes], cursor: int, pass_no: int
    ) -> bytes:
        h = self.h
        head = [b"EVALSHA", self.move_sha, b"%d" % (1 + len(pairs)), h.checkpoint.key.encode()]
        args = [
            b"%d:" % self.stats.step,
            b"%d" % cursor,
            h.checkpoint.run_id.encode(),
            b"%d" % pass_no,
            self.flag,
        ]
        return stores.pack_command([*head, *pairs, *args, *values])

    def _collect(self, reply: Sequence[Any], pairs: list[bytes], raced: list[bytes]) -> int:
        for i in reply[5]:
            self.h.note_example(self.stats, pairs[2 * (int(i) - 1)])
        raced += [pairs[2 * (int(i) - 1)] for i in reply[4]]
        # Raced keys are retried after the pass: do not count them as changes here.
        return self.h.account(self.stats, [reply[0], reply[1], 0, reply[3]])

    # -- a pass --

    def run_pass(self, cursor: int, pass_no: int) -> int:
        """Scan from ``cursor`` to the end, moving every page; returns keys changed."""
        conn: Any = self.h.client.connection_pool.get_connection()
        in_flight: deque[str] = deque()
        raced: list[bytes] = []
        changed = 0
        empty_pages = 0

        def send(kind: str, command: bytes) -> None:
            conn.send_packed_command([command], check_health=False)
            in_flight.append(kind)

        def receive(kind: str) -> Any:
            assert in_flight.popleft() == kind
            return conn.read_response()

        try:
            send("read", self._read_cmd(cursor))
            writing: list[bytes] | None = None  # the pairs of the batch in flight
            next_cursor, blob = receive("read")
            while True:
                next_cursor = int(next_cursor)
                if next_cursor:
                    send("read", self._read_cmd(next_cursor))  # Redis reads ahead meanwhile
                pairs, values = self._transform_page(bytes(blob))
                if writing is not None:
                    changed += self._collect(receive("write"), writing, raced)
                    writing = None
                empty_pages = 0 if pairs else empty_pages + 1
                # An empty page writes only the cursor, and only now and then.
                if pairs or empty_pages >= 50 or next_cursor == 0:
                    send("write", self._write_cmd(pairs, values, next_cursor, pass_no))
                    writing = pairs
                    empty_pages = 0
                if not next_cursor:
                    break
                next_cursor, blob = receive("read")
            if writing is not None:
                changed += self._collect(receive("write"), writing, raced)
        finally:
            if in_flight:  # interrupted: replies are pending, the connection is unusable
                conn.disconnect()
            self.h.client.connection_pool.release(conn)
        return changed + self._retry(raced, pass_no)

    def _retry(self, keys: list[bytes], pass_no: int) -> int:
        """Keys changed by someone else between read and write: read them again, retry."""
        h, stats = self.h, self.stats
        changed = 0
        for _attempt in range(h.retries):
            if not keys:
                break
            stats.raced += len(keys)
            raws: list[bytes | None] = h.client.mget(keys)  # type: ignore[assignment]
            pairs: list[bytes] = []
            values: list[bytes] = []
            for key, raw in zip(keys, raws, strict=True):
                if raw is None:
                    if h.client.exists(key):
                        stats.invalid += 1
                        h.note_example(stats, key)
                    else:
                        stats.gone += 1
                    continue
                new_value = self._new_value(key, raw)
                if new_value is not None:
                    pairs += (key, key if self.rename is None else self._new_key(key))
                    values += (raw, new_value)
            if not pairs:
                return changed
            args: list[Any] = [f"{stats.step}:", 0, h.checkpoint.run_id, pass_no, self.flag]
            reply = h.move_script(keys=[h.checkpoint.key, *pairs], args=[*args, *values])
            keys = [pairs[2 * (int(i) - 1)] for i in reply[4]]
            changed += self._collect(reply, pairs, [])
        return changed + len(keys)  # still racing: a sweep pass (or a re-run) retries them
