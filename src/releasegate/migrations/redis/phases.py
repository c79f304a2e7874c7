"""Redis data migrations in expand/contract form, for a release with two live versions.

The old version keeps reading and writing the old layout until it is stopped, so a
release never moves keys out from under it. For each :class:`~.moves.KeyMove` of the
pending migrations (``MOVES`` modules only; :func:`expand_problems` names the others):

- :func:`expand` (the release's ``migrate`` step) writes the new-layout twin of every
  old key next to it (``up`` transform, same absolute expiry) and sets the version key to
  the new version. Old keys are never modified.
- :func:`catch_up` (``promote``, before the traffic switch and again after it) brings
  over what the old version created, changed (value or TTL) or deleted since.
- :func:`contract` (``finalize``, once the old version is stopped) runs a last catch-up
  that leaves alone the twins the new version changed, then deletes the old layout and
  the tracking data.
- :func:`undo` before promotion deletes the twins the release wrote; after promotion
  (``promoted=True``) it first carries back, with the ``down`` transform, every
  new-layout key the new version created or changed, deletes the old keys of twins it
  deleted, then removes the new layout. The version key goes back either way.

**What a migration author provides.** A ``MOVES`` list of :class:`~.moves.KeyMove`
(pattern, old prefix, new prefix, ``up`` and ``down`` functions of one JSON object);
nothing else. Only JSON string values move; any other value under the pattern fails
the phase (``invalid``) and is left as it is.

**Change detection.** Each twin is recorded, in the same atomic Lua call that writes it,
in a tracking hash under the version key's prefix: ``key suffix -> digest(old) +
digest(new)`` (64 bits of SHA-1 over the value and its expiry time). A catch-up finds
what changed in one of two ways:

- *notified*: when the server sends keyspace notifications (``notify-keyspace-events``
  ``KA``, or ``K`` with ``g$xe``), the expand starts a :class:`~.watch.ChangeWatcher`
  in this process before it scans, and a catch-up in the same process takes only the
  keys written since the last pass (10,000 changed keys: well under a second);
- *full scan* otherwise (another process after a resume, notifications off, a lost
  subscription): the digests of every old key are recomputed server-side and only the
  keys that differ are transformed and written (a few microseconds per unchanged key).

Deletions are found among the notified keys, or by walking the tracking hash. The
tracking costs about 100 bytes per key until the contract; releasegate never changes
the server's configuration.

**What a concurrent writer can still race.** Every write is a compare-and-set on the
value the new value was computed from, so a stale value never overwrites a newer one,
and a crash at any point is resumed by running the same phase again: keys already in
step have equal digests and are skipped, so nothing is written twice. A write the old
version makes after a catch-up has passed its key waits for the next catch-up (the one
after the switch, or the contract's). When both versions change the same key between two
catch-ups, the old version's write wins at a catch-up (before the switch it is the
truth) and is counted in ``conflicts``; at the contract and in a carry-back the new
version's write wins. An old key that expires is dropped from the new layout too (its
twin has the same expiry), but its tracking entry lingers until a full scan or the
contract.

Every phase holds the release lock (or the one a release shares, see
:func:`releasegate.lock.shared`) and records a ledger release of kind ``migrate`` with
one event per version (``redis expand 0001``, ``redis catch-up 0001`` ...).
"""

from __future__ import annotations

import time
from typing import Any

from releasegate.config import Settings
from releasegate.errors import MigrationFailed, StateError
from releasegate.migrations.redis import versions, watch
from releasegate.migrations.redis.frame import (
    Phase,
    PhaseResult,
    ProgressCallback,
    check_invalid,
    phase,
    read,
    require,
    save,
)
from releasegate.migrations.redis.moves import (
    ExpandState,
    Expansion,
    expand_problems_of,
    new_expansion,
    read_expansion,
    record_key,
    tracking_key,
    write_expansion,
)
from releasegate.migrations.redis.sync import MoveStats
from releasegate.stores import redis as stores

__all__ = [
    "PhaseResult",
    "ProgressCallback",
    "catch_up",
    "contract",
    "expand",
    "expand_problems",
    "expanded_state",
    "undo",
]

_MAX_PASSES = 5


# -- the phases -----------------------------------------------------------------------------


def _sync_version(
    run: Phase, version: str, *, prefer_new: bool, changed: set[bytes] | None = None
) -> list[MoveStats]:
    """One catch-up pass of each move of ``version``: copies, changes and deletions, over
    the whole old layout, or over the ``changed`` keys only (from a change watcher)."""
    out: list[MoveStats] = []
    for index, move in enumerate(run.moves(version)):
        stats = run.stats(version, index, move)
        layout = run.layout(version, index, move)
        keys = suffixes = None
        if changed is not None:
            matches = stores.compile_glob(move.pattern).match
            keys = sorted(k for k in changed if matches(k))
            suffixes = [k[len(layout.prefix) :] for k in keys]
        run.syncer.copy_changed(layout, stats, prefer_target=prefer_new, keys=keys)
        run.syncer.delete_orphans(
            layout.tracking,
            move.old_prefix,
            move.new_prefix,
            stats,
            prefer=prefer_new,
            suffixes=suffixes,
        )
        check_invalid(run, stats)
        out.append(stats)
    return out


def _watch(run: Phase, record: Expansion) -> None:
    """Listen for writes to the old layout from now on, when the server notifies them."""
    patterns = [m.pattern for v in record.versions for m in run.moves(v)]
    watch.start(run.client, run.version_key, record.started_at, patterns)


def expand(settings: Settings, *, on_progress: ProgressCallback | None = None) -> PhaseResult:
    """Write the new layout of every pending migration next to the old one.

    The version key moves to the newest version once every twin is written; the old keys
    are never modified. Re-running it after a crash resumes; with an expansion already
    done, or nothing pending, it does nothing. Refuses (:class:`StateError`) migrations
    :func:`expand_problems` reports.
    """
    with phase(settings, "expand", on_progress) as run:
        record = read_expansion(run.client, run.version_key)
        if record is None:
            pending = [v for v in sorted(run.migrations) if _above(v, run.result.before)]
            if not pending:
                return run.result
            problems = _problems(run, pending)
            if problems:
                raise StateError("cannot expand: " + "; ".join(problems))
            record = new_expansion(run.result.before, pending)
            save(run, record)
        elif record.state == ExpandState.EXPANDED:
            newer = [v for v in sorted(run.migrations) if _above(v, record.after)]
            if newer:
                raise StateError(
                    f"cannot expand {', '.join(newer)}: redis {record.after} is still"
                    " expanded; its release must finalize (contract) or be undone first"
                )
            return run.result
        require(record, ExpandState.EXPANDING, doing="expand")
        run.result.versions = list(record.versions)
        _watch(run, record)
        run.each_version(record.versions, lambda v: _sync_version(run, v, prefer_new=False))
        record.state = ExpandState.EXPANDED
        pipe = run.client.pipeline(transaction=True)
        pipe.set(run.version_key, record.after)
        write_expansion(pipe, run.version_key, record)
        pipe.execute()
        run.result.after = record.after
        return run.result
    raise AssertionError("unreachable")  # pragma: no cover - _phase re-raises


def catch_up(settings: Settings, *, on_progress: ProgressCallback | None = None) -> PhaseResult:
    """Bring over what the old version created, changed or deleted since the last pass.

    Incremental: only keys whose value or expiry differs from what the last pass wrote
    are transformed and written. Safe to run any number of times, and after a crash.
    Nothing to do (and nothing done) without an open expansion.
    """
    with phase(settings, "catch-up", on_progress) as run:
        record = read_expansion(run.client, run.version_key)
        if record is None:
            return run.result
        require(record, ExpandState.EXPANDED, doing="catch up")
        run.result.versions = list(record.versions)
        watcher = watch.find(run.client, run.version_key, record.started_at)
        changed = watcher.drain(run.client) if watcher is not None else None
        if changed is None:
            _watch(run, record)  # before the scan: the next catch-up needs only the writes
        run.result.scan = "full" if changed is None else "notified"
        try:
            run.each_version(
                record.versions, lambda v: _sync_version(run, v, prefer_new=False, changed=changed)
            )
        except BaseException:
            if watcher is not None and changed is not None:
                watcher.give_back(changed)  # the next catch-up takes them again
            else:  # the keys the scan did not reach were not all written since: scan again
                watch.stop(run.client, run.version_key, record.started_at)
            raise
        record.caught_up_at = time.time()
        record.catch_ups += 1
        save(run, record)
        return run.result
    raise AssertionError("unreachable")  # pragma: no cover


def contract(settings: Settings, *, on_progress: ProgressCallback | None = None) -> PhaseResult:
    """Delete the old layout and the tracking data, once the old version is stopped.

    A last catch-up comes first; it leaves the twins the new version changed alone.
    """
    with phase(settings, "contract", on_progress) as run:
        record = read_expansion(run.client, run.version_key)
        if record is None:
            return run.result
        require(record, ExpandState.EXPANDED, ExpandState.CONTRACTING, doing="contract")
        watch.stop(run.client, run.version_key, record.started_at)
        run.result.versions = list(record.versions)
        if record.state == ExpandState.EXPANDED:
            run.each_version(record.versions, lambda v: _sync_version(run, v, prefer_new=True))
            record.state = ExpandState.CONTRACTING
            save(run, record)

        def drop_old(version: str) -> list[MoveStats]:
            out = []
            for index, move in enumerate(run.moves(version)):
                stats = run.stats(version, index, move)
                run.syncer.delete_layout(move.pattern, stats)
                run.client.unlink(tracking_key(run.version_key, version, index))
                out.append(stats)
            return out

        run.result.phase = "contract-delete"
        run.each_version(record.versions, drop_old)
        run.result.phase = "contract"
        run.client.delete(record_key(run.version_key))
        return run.result
    raise AssertionError("unreachable")  # pragma: no cover


def undo(settings: Settings, *, promoted: bool) -> PhaseResult:
    """Give the old version its layout back and remove the new one; version key back.

    Before promotion the twins the release wrote are deleted. With ``promoted``, what
    the new version created or changed in the new layout is first carried back with the
    ``down`` transform (and twins it deleted delete their old key). A crashed undo is
    resumed by running it again (a carry-back stays a carry-back).
    """
    with phase(settings, "undo") as run:
        record = read_expansion(run.client, run.version_key)
        if record is None:
            return run.result
        require(record, ExpandState.EXPANDING, ExpandState.EXPANDED, ExpandState.UNDOING,
                  doing="undo")  # fmt: skip
        watch.stop(run.client, run.version_key, record.started_at)
        carry = promoted or record.carry_back
        if record.state != ExpandState.UNDOING or carry != record.carry_back:
            record.state, record.carry_back = ExpandState.UNDOING, carry
            save(run, record)
        run.result.phase = "carry-back" if carry else "undo"
        run.result.versions = list(record.versions)
        run.each_version(list(reversed(record.versions)), lambda v: _undo_version(run, v, carry))
        pipe = run.client.pipeline(transaction=True)
        if record.before is None:
            pipe.delete(run.version_key)
        else:
            pipe.set(run.version_key, record.before)
        pipe.delete(record_key(run.version_key))
        pipe.execute()
        run.result.after = record.before
        return run.result
    raise AssertionError("unreachable")  # pragma: no cover


def _undo_version(run: Phase, version: str, carry: bool) -> list[MoveStats]:
    out: list[MoveStats] = []
    for index, move in enumerate(run.moves(version)):
        stats = run.stats(version, index, move)
        tracking = tracking_key(run.version_key, version, index)
        if not carry:
            run.syncer.remove_copies(tracking, move.old_prefix, move.new_prefix, stats, carry=False)
            out.append(stats)
            continue
        layout = run.layout(version, index, move, back=True)
        for _pass in range(_MAX_PASSES):
            stats.passes += 1
            written = run.syncer.copy_changed(layout, stats, prefer_target=False)
            check_invalid(run, stats)
            changed_since = run.syncer.remove_copies(
                tracking, move.old_prefix, move.new_prefix, stats, carry=True
            )
            if written == 0 and changed_since == 0:
                break
        else:
            raise MigrationFailed(
                f"keys matching {move.new_pattern} keep changing after {_MAX_PASSES} passes:"
                " is the new version still writing them? Stop it and run the undo again"
            )
        run.client.unlink(tracking)
        out.append(stats)
    return out


# -- for the release plan and status ---------------------------------------------------------


def _above(version: str, current: str | None) -> bool:
    return current is None or version > current


def _problems(run: Phase, pending: list[str]) -> list[str]:
    named = [(f"{v} ({run.migrations[v].name})", run.migrations[v].moves) for v in pending]
    return expand_problems_of(named)


def expand_problems(settings: Settings) -> list[str]:
    """Why the pending Redis migrations cannot run in expand form; empty when they can.

    One line per problem: a migration written as ``up``/``down`` code, a move without a
    ``down`` transform, moves of pending migrations that touch each other's keys, an
    unknown data version, or an expansion still waiting for its contract.
    """
    section = versions.section_of(settings)
    migrations = {m.version: m for m in versions.load_all(settings)}
    client = versions.connect(settings, "redis expand plan")
    try:
        current = read(client, lambda: versions.read_version(client, section.version_key))
        record = read(client, lambda: read_expansion(client, section.version_key))
    finally:
        client.close()
    if current is not None and current not in migrations:
        return [versions.unknown_problem(current)]
    if record is not None:
        base = record.after if record.state != ExpandState.EXPANDING else record.before
        pending = [v for v in sorted(migrations) if _above(v, base)]
        if record.state == ExpandState.EXPANDING:
            pending = sorted(set(pending) | set(record.versions))
        elif pending:
            return [
                f"redis {record.after} is still expanded ({record.state}): the release that"
                " expanded it must finalize (contract) or be undone before another expand"
            ]
    else:
        pending = [v for v in sorted(migrations) if _above(v, current)]
    named = [(f"{v} ({migrations[v].name})", migrations[v].moves) for v in pending]
    return expand_problems_of(named)


def expanded_state(settings: Settings) -> dict[str, Any] | None:
    """The open expansion (state, before, after, versions, twins tracked per move); None
    when nothing is expanded and not yet contracted (or undone)."""
    section = versions.section_of(settings)
    migrations = {m.version: m for m in versions.load_all(settings)}
    client = versions.connect(settings, "redis expand status")
    try:
        record: Expansion | None = read(client, lambda: read_expansion(client, section.version_key))
        if record is None:
            return None
        data = record.to_dict()
        tracked: dict[str, int] = {}
        for version in record.versions:
            known = migrations.get(version)
            for index in range(len(known.moves or []) if known else 0):
                key = tracking_key(section.version_key, version, index)
                tracked[f"{version}:{index}"] = int(client.hlen(key))
        data["tracked"] = tracked
        return data
    finally:
        client.close()
