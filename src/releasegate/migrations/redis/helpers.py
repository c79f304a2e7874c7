"""Batched, resumable, idempotent key operations for Redis data migrations.

Every helper walks the keyspace with ``SCAN`` (``MATCH pattern``, ``COUNT batch_size``) and
changes one page of keys per Lua call. Three guarantees hold whatever dies when:

- **One key, one atomic move.** A Lua script checks that the old key still holds the value
  the new one was computed from (compare-and-set), moves it with its TTL (``RENAMENX``,
  which also refuses to overwrite an existing new key) and puts the new value in (``SET
  KEEPTTL``), all in one atomic call. A key that is gone (moved already) is skipped; one
  whose value changed since it was read is read again and retried. A key is therefore
  never lost and never transformed twice, even when the process or Redis dies mid-batch
  and the step runs again from scratch.
- **The checkpoint moves with the data.** The same Lua call records the SCAN cursor and the
  running counts in the migration's checkpoint hash (``<version_key>:checkpoint:<version>:
  <direction>``), so the checkpoint never runs ahead of the data. A re-run continues from
  the cursor instead of rescanning work already done. A SCAN cursor means something only
  to the server process that issued it: after a Redis restart (its ``run_id`` changes) the
  step rescans from 0, which is safe because of the first guarantee.
- **Nothing left behind.** A rename ends with a sweep: SCAN again until a whole pass finds
  no key left under the old pattern (keys written meanwhile, or SCAN having missed one).

JSON transforms keep two Lua calls in flight on a connection of their own (see
:class:`_JsonMover`): Redis reads the next page while Python transforms this one.

In-place transforms (:meth:`Helpers.transform_json`) cannot tell a transformed value from an
untransformed one by its key: give them an idempotent function or an ``is_done`` test.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from releasegate.errors import ConfigError, MigrationFailed
from releasegate.stores import redis as stores

log = logging.getLogger("releasegate.redis.migrations")

JsonFn = Callable[[dict[str, Any]], dict[str, Any] | None]
TtlFn = Callable[[str, float | None], float | None]

# Lua: one page of atomic compare-and-move (or in-place rewrite) of string keys: a key
# moves only if it still holds the value the new one was computed from; RENAMENX keeps its
# TTL and refuses to overwrite, SET KEEPTTL puts the new value in.
# KEYS: checkpoint, then (old, new) pairs. ARGV: field prefix, next cursor, run id, pass,
# overwrite flag, then (expected old value, new value) pairs.
_MOVE_LUA = """
local p, overwrite = ARGV[1], ARGV[5]
local moved, gone, raced, conflicts = 0, 0, 0, 0
local failed, clashed = {}, {}
local n = (#KEYS - 1) / 2
local sources, currents = {}, {}
for i = 1, n do sources[i] = KEYS[2 * i] end
local first = 1
while first <= n do
  local last = math.min(first + 499, n)
  local values = redis.call('MGET', unpack(sources, first, last))
  for i = first, last do currents[i] = values[i - first + 1] end
  first = last + 1
end
for i = 1, n do
  local src, dst = sources[i], KEYS[2 * i + 1]
  local expected, value = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local current = currents[i]
  if current == false and redis.call('EXISTS', src) == 0 then
    gone = gone + 1
  elseif current ~= expected then
    raced = raced + 1
    failed[#failed + 1] = i
  elseif src == dst then
    redis.call('SET', dst, value, 'KEEPTTL')
    moved = moved + 1
  elseif overwrite == '1' or redis.call('RENAMENX', src, dst) == 1 then
    -- The key moves with its TTL, then gets its new value in the same atomic step.
    if overwrite == '1' then redis.call('RENAME', src, dst) end
    redis.call('SET', dst, value, 'KEEPTTL')
    moved = moved + 1
  else
    conflicts = conflicts + 1
    clashed[#clashed + 1] = i
  end
end
redis.call('HSET', KEYS[1], p .. 'cursor', ARGV[2], p .. 'run', ARGV[3], p .. 'pass', ARGV[4])
redis.call('HINCRBY', KEYS[1], p .. 'changed', moved)
redis.call('HINCRBY', KEYS[1], p .. 'batches', 1)
return {moved, gone, raced, conflicts, failed, clashed}
"""

# Lua: one SCAN page with the values of its keys, as one string of records
# (key length u32, value length i32: -1 gone, -2 not a string; key; value).
# ARGV: cursor, match pattern, count. Returns {next cursor, records}.
_READ_LUA = """
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local keys = page[2]
local parts = {}
local n = #keys
local first = 1
while first <= n do
  local last = math.min(first + 499, n)
  local values = redis.call('MGET', unpack(keys, first, last))
  for i = first, last do
    local key, value = keys[i], values[i - first + 1]
    if value then
      parts[#parts + 1] = struct.pack('>I4i4', #key, #value)
      parts[#parts + 1] = key
      parts[#parts + 1] = value
    else
      local gone = redis.call('EXISTS', key) == 0
      parts[#parts + 1] = struct.pack('>I4i4', #key, gone and -1 or -2)
      parts[#parts + 1] = key
    end
  end
  first = last + 1
end
return {page[1], table.concat(parts)}
"""

# Lua: one page of RENAMEs (any type; RENAME keeps the TTL). Same KEYS/ARGV layout, no values.
_RENAME_LUA = """
local p, overwrite = ARGV[1], ARGV[5]
local moved, gone, conflicts = 0, 0, 0
local clashed = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local src, dst = KEYS[2 * i], KEYS[2 * i + 1]
  local done
  if overwrite == '1' then
    done = redis.pcall('RENAME', src, dst)
  else
    done = redis.pcall('RENAMENX', src, dst)
  end
  if type(done) == 'table' and done['err'] then
    gone = gone + 1  -- no such key: renamed by an earlier run, or deleted
  elseif done == 0 then
    conflicts = conflicts + 1
    clashed[#clashed + 1] = i
  else
    moved = moved + 1
  end
end
redis.call('HSET', KEYS[1], p .. 'cursor', ARGV[2], p .. 'run', ARGV[3], p .. 'pass', ARGV[4])
redis.call('HINCRBY', KEYS[1], p .. 'changed', moved)
redis.call('HINCRBY', KEYS[1], p .. 'batches', 1)
return {moved, gone, 0, conflicts, {}, clashed}
"""

# Lua: one page of TTL changes. KEYS: checkpoint, then keys. ARGV: field prefix, next cursor,
# run id, pass, only-missing flag, then one value per key: milliseconds, or -1 to persist.
_TTL_LUA = """
local p, only_missing = ARGV[1], ARGV[5]
local changed, gone, skipped = 0, 0, 0
for i = 2, #KEYS do
  local key, ms = KEYS[i], tonumber(ARGV[4 + i])
  local pttl = redis.call('PTTL', key)
  if pttl == -2 then
    gone = gone + 1
  elseif only_missing == '1' and pttl ~= -1 then
    skipped = skipped + 1
  elseif ms < 0 then
    if redis.call('PERSIST', key) == 1 then changed = changed + 1 else skipped = skipped + 1 end
  else
    redis.call('PEXPIRE', key, ms)
    changed = changed + 1
  end
end
redis.call('HSET', KEYS[1], p .. 'cursor', ARGV[2], p .. 'run', ARGV[3], p .. 'pass', ARGV[4])
redis.call('HINCRBY', KEYS[1], p .. 'changed', changed)
redis.call('HINCRBY', KEYS[1], p .. 'batches', 1)
return {changed, gone, 0, 0, {}, {}, skipped}
"""

_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def camel_to_snake(name: str) -> str:
    """``userAgent`` -> ``user_agent``, ``HTTPCode`` -> ``http_code``."""
    return _CAMEL_RE.sub("_", name).lower()


def snake_to_camel(name: str) -> str:
    """``user_agent`` -> ``userAgent``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def field_map(
    rename: Mapping[str, str],
    *,
    defaults: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
) -> JsonFn:
    """A JSON transform: rename fields, add ``defaults`` for missing ones, ``drop`` others.

    Fields not named stay as they are (and keep their order). Applying it to its own
    output changes nothing, so it is safe for in-place transforms.
    """
    renames = dict(rename)
    extra = dict(defaults or {})
    dropped = set(drop)

    def transform(value: dict[str, Any]) -> dict[str, Any]:
        out = {renames.get(k, k): v for k, v in value.items() if k not in dropped}
        for name, default in extra.items():
            out.setdefault(name, default)
        return out

    return transform


# -- progress and results ---------------------------------------------------------------


@dataclass
class StepStats:
    """What one helper call did; the ``key counts`` of the ledger event."""

    step: int
    operation: str
    pattern: str
    scanned: int = 0  # keys SCAN returned under the pattern
    changed: int = 0  # keys moved, rewritten or given a TTL
    unchanged: int = 0  # nothing to do (already done, same value, TTL already right)
    gone: int = 0  # deleted between SCAN and the change (or moved by an earlier run)
    raced: int = 0  # changed by someone else between read and write, then retried
    conflicts: int = 0  # renames whose target already existed: left alone
    invalid: int = 0  # values a JSON transform could not read: left alone
    batches: int = 0
    passes: int = 0
    resumed: bool = False  # continued from a checkpoint
    skipped: bool = False  # finished by an earlier run: nothing done now
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # a few keys behind problems

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass(frozen=True)
class Progress:
    """Reported after every batch: the version, the step, and the counts so far."""

    version: str
    direction: str
    stats: StepStats


ProgressCallback = Callable[[Progress], None]


class Checkpoint:
    """The progress of one version in one direction, in a Redis hash.

    Fields are prefixed by the step number (``3:cursor``, ``3:run``, ``3:pass``,
    ``3:changed``, ``3:batches``, ``3:done``). Batch scripts write them in the same atomic
    call as the data; :meth:`finish_step` marks a step done.
    """

    def __init__(self, client: redis.Redis, key: str, run_id: str) -> None:
        self.client = client
        self.key = key
        self.run_id = run_id
        self.fields: dict[str, str] = {_text(k): _text(v) for k, v in client.hgetall(key).items()}

    @property
    def exists(self) -> bool:
        return bool(self.fields)

    def get(self, step: int, name: str) -> str | None:
        return self.fields.get(f"{step}:{name}")

    def finish_step(self, step: int) -> None:
        self.client.hset(self.key, f"{step}:done", "1")


def checkpoint_key(version_key: str, version: str, direction: str) -> str:
    """The hash that holds the checkpoint of ``version`` migrating in ``direction``."""
    return f"{version_key}:checkpoint:{version}:{direction}"


# -- the helpers --------------------------------------------------------------------------


class Helpers:
    """Key operations for one migration run; :class:`MigrationContext` exposes them.

    Each call is one *step*, numbered in call order, with its own checkpoint fields; a
    migration must therefore call its helpers in the same order on every run.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        version: str,
        direction: str,
        checkpoint: Checkpoint,
        batch_size: int,
        protected_prefix: bytes,
        on_progress: ProgressCallback | None = None,
        max_passes: int = 5,
        retries: int = 3,
    ) -> None:
        self.client = client
        self.version = version
        self.direction = direction
        self.checkpoint = checkpoint
        self.batch_size = batch_size
        self.protected = protected_prefix
        self.on_progress = on_progress
        self.max_passes = max_passes
        self.retries = retries
        self.steps: list[StepStats] = []
        self._move = client.register_script(_MOVE_LUA)
        self._rename = client.register_script(_RENAME_LUA)
        self._ttl = client.register_script(_TTL_LUA)

    # -- public operations --

    def rename_keys(
        self, pattern: str, old_prefix: str, new_prefix: str, *, overwrite: bool = False
    ) -> StepStats:
        """Rename every key matching ``pattern`` from ``old_prefix...`` to ``new_prefix...``.

        Any type; the TTL is kept (``RENAME``). A key whose new name exists already is left
        alone and counted as a conflict (the step then fails) unless ``overwrite``.
        """
        old, new = self._prefixes(pattern, old_prefix, new_prefix)
        stats = self._start("rename_keys", pattern)

        def page(keys: list[bytes], args: list[Any]) -> list[Any]:
            pairs = [k2 for k in keys for k2 in (k, new + k[len(old) :])]
            reply = list(self._rename(keys=[self.checkpoint.key, *pairs], args=args))
            for i in reply[5]:
                self._note(stats, keys[int(i) - 1])
            return reply

        flag = "1" if overwrite else "0"
        self._run(stats, pattern, self._scan_pass(stats, pattern, page, flag), sweep=True)
        return stats

    def transform_json(
        self,
        pattern: str,
        fn: JsonFn,
        *,
        is_done: Callable[[dict[str, Any]], bool] | None = None,
    ) -> StepStats:
        """Rewrite, in place, the JSON object held by every string key matching ``pattern``.

        ``fn`` gets the decoded object and returns the new one (``None``: leave the key).
        The TTL is kept. Keys whose value ``is_done`` accepts, or that ``fn`` leaves equal,
        are not written. Because a transformed value sits under the same key, a re-run after
        a Redis restart visits keys already done: ``fn`` must be idempotent, or ``is_done``
        must recognise its output.
        """
        stats = self._start("transform_json", pattern)
        self._run_json(stats, pattern, fn, None, is_done=is_done, sweep=False)
        return stats

    def rename_and_transform(
        self,
        pattern: str,
        old_prefix: str,
        new_prefix: str,
        fn: JsonFn,
        *,
        overwrite: bool = False,
    ) -> StepStats:
        """Move each JSON string key ``old_prefix...`` to ``new_prefix...`` with ``fn`` applied.

        The common combined case (``sess:{id}`` camelCase -> ``session:{id}`` snake_case).
        Each key moves atomically with its remaining TTL; the old key disappears in the same
        step, so a re-run can never transform a value twice.
        """
        old, new = self._prefixes(pattern, old_prefix, new_prefix)
        stats = self._start("rename_and_transform", pattern)
        self._run_json(stats, pattern, fn, (old, new), overwrite=overwrite, sweep=True)
        return stats

    def set_ttl(
        self, pattern: str, ttl: float | TtlFn | None, *, only_missing: bool = False
    ) -> StepStats:
        """Give every key matching ``pattern`` a TTL of ``ttl`` seconds (``None``: no TTL).

        ``ttl`` may be a function ``(key, current_ttl_seconds_or_None) -> seconds or None``.
        ``only_missing`` touches only keys that have no TTL yet (idempotent by design).
        """
        stats = self._start("set_ttl", pattern)
        fixed = None if callable(ttl) else _ttl_ms(ttl)

        def page(keys: list[bytes], args: list[Any]) -> list[Any]:
            if fixed is not None:
                values = [fixed] * len(keys)
            else:
                assert callable(ttl)
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.pttl(key)
                current = pipe.execute()
                values = [
                    _ttl_ms(ttl(k.decode(errors="replace"), p / 1000 if p > 0 else None))
                    for k, p in zip(keys, current, strict=True)
                ]
            reply = list(self._ttl(keys=[self.checkpoint.key, *keys], args=[*args, *values]))
            stats.unchanged += int(reply[6])
            return reply

        flag = "1" if only_missing else "0"
        self._run(stats, pattern, self._scan_pass(stats, pattern, page, flag), sweep=False)
        return stats

    # -- machinery --

    def _prefixes(self, pattern: str, old_prefix: str, new_prefix: str) -> tuple[bytes, bytes]:
        if not old_prefix or old_prefix == new_prefix:
            raise ConfigError(f"rename of {pattern}: old and new prefixes must differ")
        if not pattern.startswith(stores.glob_escape(old_prefix)):
            raise ConfigError(f"rename: pattern {pattern!r} must start with {old_prefix!r}")
        if stores.compile_glob(pattern).match(new_prefix.encode() + b"x"):
            raise ConfigError(f"rename: new names {new_prefix}* would match {pattern!r} again")
        return old_prefix.encode(), new_prefix.encode()

    def _start(self, operation: str, pattern: str) -> StepStats:
        stats = StepStats(step=len(self.steps) + 1, operation=operation, pattern=pattern)
        self.steps.append(stats)
        return stats

    def _note(self, stats: StepStats, key: bytes) -> None:
        if len(stats.examples) < 3:
            stats.examples.append(key[:120].decode(errors="replace"))

    def _run_json(
        self,
        stats: StepStats,
        pattern: str,
        fn: JsonFn,
        rename: tuple[bytes, bytes] | None,
        *,
        is_done: Callable[[dict[str, Any]], bool] | None = None,
        overwrite: bool = False,
        sweep: bool,
    ) -> None:
        mover = _JsonMover(self, stats, pattern, fn, rename, is_done, overwrite)
        self._run(stats, pattern, mover.run_pass, sweep=sweep)
        if stats.invalid:
            raise MigrationFailed(
                f"{stats.invalid} keys matching {pattern} hold no JSON object"
                f" (e.g. {', '.join(stats.examples)}); they were left as they are"
            )

    def _account(self, stats: StepStats, reply: Sequence[Any]) -> int:
        """Add one batch's Lua reply (changed, gone, raced, conflicts, ...) to ``stats``."""
        changed, gone, raced, conflicts = (int(x) for x in reply[:4])
        stats.changed += changed
        stats.gone += gone
        stats.raced += raced
        stats.conflicts += conflicts
        stats.batches += 1
        if self.on_progress is not None:
            self.on_progress(Progress(self.version, self.direction, stats))
        return changed + raced

    def _scan_pass(
        self,
        stats: StepStats,
        pattern: str,
        page: Callable[[list[bytes], list[Any]], list[Any]],
        flag: str,
    ) -> Callable[[int, int], int]:
        """A pass over ``pattern`` that hands each SCAN page to ``page`` (one Lua call)."""

        def run_pass(cursor: int, pass_no: int) -> int:
            changed_this_pass = 0
            empty_pages = 0
            for next_cursor, keys in stores.scan_pages(
                self.client, pattern, self.batch_size, cursor
            ):
                wanted = [k for k in dict.fromkeys(keys) if not k.startswith(self.protected)]
                stats.scanned += len(wanted)
                args: list[Any] = [
                    f"{stats.step}:",
                    next_cursor,
                    self.checkpoint.run_id,
                    pass_no,
                    flag,
                ]
                if wanted:
                    changed_this_pass += self._account(stats, page(wanted, args))
                    empty_pages = 0
                    continue
                empty_pages += 1
                # Move the cursor now and then, so a resume skips empty stretches too.
                if empty_pages >= 50 or next_cursor == 0:
                    self._rename(keys=[self.checkpoint.key], args=args)
                    empty_pages = 0
            return changed_this_pass

        return run_pass

    def _run(
        self,
        stats: StepStats,
        pattern: str,
        run_pass: Callable[[int, int], int],
        *,
        sweep: bool,
    ) -> None:
        """Run passes of ``run_pass`` until done, resuming from the checkpoint.

        ``run_pass(cursor, pass_no)`` scans from ``cursor`` to the end of the keyspace and
        returns how many keys it changed (or saw racing). With ``sweep``, passes repeat
        until one changes nothing.
        """
        started = time.monotonic()
        step = stats.step
        ckpt = self.checkpoint
        if ckpt.get(step, "done") == "1":
            stats.skipped = True
            stats.changed = int(ckpt.get(step, "changed") or 0)
            log.info(
                "redis %s %s step %d: done by an earlier run", self.direction, self.version, step
            )
            return
        cursor, pass_no = 0, 1
        if ckpt.get(step, "cursor") is not None:
            stats.resumed = True
            stats.changed = int(ckpt.get(step, "changed") or 0)
            stats.batches = int(ckpt.get(step, "batches") or 0)
            pass_no = int(ckpt.get(step, "pass") or 1)
            if ckpt.get(step, "run") == ckpt.run_id:
                cursor = int(ckpt.get(step, "cursor") or 0)
                if cursor == 0:  # the last run finished a pass
                    if not sweep:  # one pass is all an in-place step does
                        ckpt.finish_step(step)
                        stats.seconds = time.monotonic() - started
                        return
                    pass_no += 1
            # else: Redis restarted since: its cursors mean nothing now; rescan (safe).
        while True:
            stats.passes += 1
            stats.conflicts = 0  # a conflict is left in place: count it in the last pass only
            stats.examples.clear()
            changed_this_pass = run_pass(cursor, pass_no)
            cursor = 0
            if not sweep or changed_this_pass == 0:
                break
            if stats.passes >= self.max_passes:
                raise MigrationFailed(
                    f"keys matching {pattern} keep appearing after {stats.passes} passes:"
                    " is an application still writing them? Stop it and run again"
                )
            pass_no += 1
        stats.seconds = time.monotonic() - started
        if stats.conflicts:
            raise MigrationFailed(
                f"{stats.conflicts} keys matching {pattern} could not be renamed: the new name"
                f" exists already (e.g. {', '.join(stats.examples) or '?'}); remove or merge"
                " those keys, or pass overwrite=True"
            )
        ckpt.finish_step(step)
        log.info(
            "redis %s %s step %d %s %s: %d changed in %d batches (%.1fs)",
            self.direction,
            self.version,
            step,
            stats.operation,
            pattern,
            stats.changed,
            stats.batches,
            stats.seconds,
        )


_KV_HEAD = struct.Struct(">Ii")
_DECODE = json.JSONDecoder().decode
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _JsonMover:
    """Pipelined passes of a JSON transform (with or without a rename).

    Two commands are kept in flight on a connection of its own: while Python decodes and
    transforms page *k*, Redis applies the atomic batch of page *k-1* and reads page *k+1*
    (one Lua call returns a SCAN page with its values as a single string). So the client
    and the server work at the same time, and each page costs one round trip.
    """

    def __init__(
        self,
        helpers: Helpers,
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
        self.read_sha = str(client.script_load(_READ_LUA)).encode()
        self.move_sha = str(client.script_load(_MOVE_LUA)).encode()

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
                    h._note(stats, key)
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
            self.h._note(stats, key)
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
            self.h._note(self.stats, pairs[2 * (int(i) - 1)])
        raced += [pairs[2 * (int(i) - 1)] for i in reply[4]]
        # Raced keys are retried after the pass: do not count them as changes here.
        return self.h._account(self.stats, [reply[0], reply[1], 0, reply[3]])

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
                        h._note(stats, key)
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
            reply = h._move(keys=[h.checkpoint.key, *pairs], args=[*args, *values])
            keys = [pairs[2 * (int(i) - 1)] for i in reply[4]]
            changed += self._collect(reply, pairs, [])
        return changed + len(keys)  # still racing: a sweep pass (or a re-run) retries them


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ttl_ms(ttl: float | None) -> int:
    if ttl is None:
        return -1
    if ttl <= 0:
        raise ConfigError(f"a TTL must be positive, not {ttl}")
    return max(1, round(ttl * 1000))


def progress_of(checkpoint: Mapping[str, str], steps: Sequence[int] = ()) -> dict[str, Any]:
    """A checkpoint hash in readable form: per step, cursor, pass, changed and done."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in checkpoint.items():
        step, _, field_name = name.partition(":")
        if steps and int(step) not in steps:
            continue
        out.setdefault(step, {})[field_name] = value
    return out
