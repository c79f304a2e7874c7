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
:class:`~releasegate.migrations.redis.json_mover.JsonMover`): Redis reads the next page
while Python transforms this one.

In-place transforms (:meth:`Helpers.transform_json`) cannot tell a transformed value from an
untransformed one by its key: give them an idempotent function or an ``is_done`` test.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from releasegate.errors import ConfigError, MigrationFailed
from releasegate.migrations.redis.batch_scripts import MOVE_LUA, RENAME_LUA, TTL_LUA
from releasegate.migrations.redis.checkpoint import (
    Checkpoint,
    Progress,
    ProgressCallback,
    StepStats,
)
from releasegate.migrations.redis.json_fields import JsonFn
from releasegate.migrations.redis.json_mover import JsonMover
from releasegate.stores import redis as stores

log = logging.getLogger("releasegate.redis.migrations")

TtlFn = Callable[[str, float | None], float | None]


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
        self.move_script = client.register_script(MOVE_LUA)
        self._rename = client.register_script(RENAME_LUA)
        self._ttl = client.register_script(TTL_LUA)

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
                self.note_example(stats, keys[int(i) - 1])
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

    def note_example(self, stats: StepStats, key: bytes) -> None:
        """Keep a few keys behind problems as examples for the error message."""
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
        mover = JsonMover(self, stats, pattern, fn, rename, is_done, overwrite)
        self._run(stats, pattern, mover.run_pass, sweep=sweep)
        if stats.invalid:
            raise MigrationFailed(
                f"{stats.invalid} keys matching {pattern} hold no JSON object"
                f" (e.g. {', '.join(stats.examples)}); they were left as they are"
            )

    def account(self, stats: StepStats, reply: Sequence[Any]) -> int:
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
                    changed_this_pass += self.account(stats, page(wanted, args))
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


def _ttl_ms(ttl: float | None) -> int:
    if ttl is None:
        return -1
    if ttl <= 0:
        raise ConfigError(f"a TTL must be positive, not {ttl}")
    return max(1, round(ttl * 1000))
