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

**Change detection.** Each twin is recorded, in the same atomic Lua call that writes it,
in a tracking hash under the version key's prefix: ``key suffix -> digest(old) +
digest(new)`` (64 bits of SHA-1 over value and expiry time). A catch-up recomputes the
digests server-side and transforms and writes only the keys that differ; deletions are
found by walking the tracking hash. Its cost is therefore one server-side read of every
old key (about 1 us each) plus the work on the changed keys: it needs no subscriber, no
server config (keyspace notifications would miss writes while nobody listens) and
survives any crash. The tracking costs about 100 bytes of memory per key until the
contract. See :mod:`.sync` for the Lua.

**What a concurrent writer can still race.** Every write is a compare-and-set on the
digest the new value was computed from, so a stale value never overwrites a newer one,
and a crash at any point is resumed by running the same phase again (a key already in
step has an equal digest and is skipped, so nothing is written twice). But a write the
old version makes after a catch-up has passed its key waits for the next catch-up: the
one after the switch, or the contract's. When the old and the new version both change
the same session between two catch-ups, the old version's write wins at a catch-up
(before the switch the old version is the truth) and is counted in ``conflicts``; at
the contract and in a carry-back the new version's write wins. Only JSON string keys
can move; other values fail the phase (``invalid``) and are left as they are.

Every phase holds the release lock (or the one a release shares, see
:func:`releasegate.lock.shared`) and records a ledger release of kind ``migrate`` with
one event per version (``redis expand 0001``, ``redis catch-up 0001`` ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import redis

from releasegate import db
from releasegate.config import RedisSection, Settings
from releasegate.errors import MigrationFailed, ReleasegateError, StateError
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.lock import HeldLock, service_lock
from releasegate.migrations.redis import engine
from releasegate.migrations.redis.moves import (
    ExpandState,
    Expansion,
    KeyMove,
    expand_problems_of,
    new_expansion,
    read_expansion,
    record_key,
    tracking_key,
    write_expansion,
)
from releasegate.migrations.redis.sync import Layout, MoveStats, Syncer
from releasegate.runinfo import git_sha, performer
from releasegate.stores import redis as stores

ProgressCallback = Callable[[MoveStats], None]

_MAX_PASSES = 5
_COUNTS = (
    "copied",
    "updated",
    "deleted",
    "carried_back",
    "removed",
    "old_deleted",
    "conflicts",
    "raced",
    "gone",
    "invalid",
    "scanned",
    "unchanged",
)


@dataclass
class PhaseResult:
    """What one phase did; ``changed`` is the twins rewritten because their source changed."""

    phase: str
    before: str | None
    after: str | None
    versions: list[str] = field(default_factory=list)
    moves: list[MoveStats] = field(default_factory=list)
    duration_s: float = 0.0
    release_id: int | None = None

    def count(self, name: str) -> int:
        return sum(int(getattr(m, name)) for m in self.moves)

    @property
    def copied(self) -> int:
        return self.count("copied")

    @property
    def changed(self) -> int:
        return self.count("updated")

    @property
    def deleted(self) -> int:
        return self.count("deleted")

    @property
    def carried_back(self) -> int:
        return self.count("carried_back")

    @property
    def conflicts(self) -> int:
        return self.count("conflicts")

    @property
    def removed(self) -> int:
        return self.count("removed")

    @property
    def old_deleted(self) -> int:
        return self.count("old_deleted")

    @property
    def did_nothing(self) -> bool:
        return not self.versions

    def counts(self) -> dict[str, int]:
        out = {name: self.count(name) for name in _COUNTS}
        out["changed"] = out.pop("updated")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": "redis",
            "phase": self.phase,
            "before": engine.format_version(self.before),
            "after": engine.format_version(self.after),
            "versions": self.versions,
            "duration_s": round(self.duration_s, 3),
            "release_id": self.release_id,
            **self.counts(),
            "moves": [m.to_dict() for m in self.moves],
        }


# -- the shared frame of every phase ----------------------------------------------------------


@dataclass
class _Phase:
    settings: Settings
    section: RedisSection
    client: redis.Redis
    held: HeldLock
    ledger: Ledger
    result: PhaseResult
    syncer: Syncer
    migrations: dict[str, engine.RedisMigration]

    @property
    def version_key(self) -> str:
        return self.section.version_key

    def moves(self, version: str) -> list[KeyMove]:
        moves = self.migrations[version].moves
        if moves is None:
            raise StateError(f"redis migration {version} declares no MOVES: it cannot expand")
        return moves

    def stats(self, version: str, index: int, move: KeyMove) -> MoveStats:
        stats = MoveStats(step=index + 1, operation=self.result.phase, pattern=move.pattern)
        self.result.moves.append(stats)
        return stats

    def layout(self, version: str, index: int, move: KeyMove, *, back: bool = False) -> Layout:
        tracking = tracking_key(self.version_key, version, index)
        if back:
            assert move.down is not None
            return Layout(
                tracking,
                move.new_pattern,
                move.new_prefix.encode(),
                move.old_prefix.encode(),
                move.down,
                back=True,
            )
        return Layout(
            tracking, move.pattern, move.old_prefix.encode(), move.new_prefix.encode(), move.up
        )

    def each_version(self, versions: list[str], work: Callable[[str], list[MoveStats]]) -> None:
        """Run ``work`` per version, recording one ledger event each."""
        for version in versions:
            self.held.ensure_held()
            started = time.monotonic()
            name = f"redis {self.result.phase} {version}"
            before = len(self.result.moves)
            try:
                stats = work(version)
            except BaseException as exc:
                self._event(name, version, self.result.moves[before:], started, exc)
                raise
            self._event(name, version, stats, started, None)

    def _event(
        self,
        name: str,
        version: str,
        stats: list[MoveStats],
        started: float,
        exc: BaseException | None,
    ) -> None:
        detail: dict[str, Any] = {
            "store": "redis",
            "version": version,
            "phase": self.result.phase,
            "moves": [s.to_dict() for s in stats],
        }
        if exc is not None:
            detail["error"] = _error_text(exc)
        status = StepStatus.OK if exc is None else StepStatus.FAILED
        self.ledger.record_event(
            self.result.release_id or 0, name, status, time.monotonic() - started, detail
        )


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ReleasegateError):
        return db.first_line(exc)
    return f"{type(exc).__name__}: {db.first_line(exc)}"


@contextmanager
def _phase(
    settings: Settings, phase: str, on_progress: ProgressCallback | None = None
) -> Iterator[_Phase]:
    """Lock, ledger release and Redis client of one phase; failures recorded and explained."""
    section = engine.section_of(settings)
    migrations = {m.version: m for m in engine.load_all(settings)}
    pg_url = settings.postgres_url()
    db.check_url(pg_url, f"${settings.raw.postgres.url_env}")
    client = engine.connect(settings, f"redis {phase}")
    started = time.monotonic()
    try:
        with (
            service_lock(settings, f"redis {phase}") as held,
            Ledger.open(pg_url) as ledger,
        ):
            current = _read(client, lambda: engine.read_version(client, section.version_key))
            result = PhaseResult(phase, current, current)
            result.release_id = ledger.start_release(
                settings.service,
                "migrate",
                performer(),
                git_sha=git_sha(settings.root),
                redis_before=engine.format_version(current),
            )
            ledger.record_event(
                result.release_id, "lock", StepStatus.OK, held.waited, {"service": settings.service}
            )
            syncer = Syncer(client, section.batch_size, on_progress)
            run = _Phase(settings, section, client, held, ledger, result, syncer, migrations)
            try:
                yield run
            except BaseException as exc:
                _fail(run, exc)
            result.duration_s = time.monotonic() - started
            ledger.finish_release(
                result.release_id,
                Outcome.SUCCEEDED,
                {"store": "redis", "phase": phase, "versions": result.versions}
                | {"keys": result.counts()},
                redis_after=engine.format_version(result.after),
            )
    finally:
        client.close()


def _fail(run: _Phase, exc: BaseException) -> None:
    result = run.result
    error = _error_text(exc)
    if isinstance(exc, redis.RedisError):
        error = db.first_line(stores.infra_error(run.client, exc, f"the redis {result.phase}"))
    with suppress(redis.RedisError):
        result.after = engine.read_version(run.client, run.version_key)
    assert result.release_id is not None
    run.ledger.finish_release(
        result.release_id,
        Outcome.FAILED,
        {"store": "redis", "phase": result.phase, "error": error, "keys": result.counts()},
        redis_after=engine.format_version(result.after),
    )
    if isinstance(exc, ReleasegateError) and not isinstance(exc, MigrationFailed):
        raise exc
    if isinstance(exc, redis.RedisError):
        raise stores.infra_error(run.client, exc, f"the redis {result.phase}") from None
    if not isinstance(exc, Exception):
        raise exc
    raise MigrationFailed(
        f"redis {result.phase} failed: {error}; run it again to resume"
        f" (ledger release {result.release_id})"
    ) from exc


def _read(client: redis.Redis, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except redis.RedisError as exc:
        raise stores.infra_error(client, exc, "reading the data version") from None


def _require(record: Expansion, *states: str, doing: str) -> None:
    if record.state not in states:
        raise StateError(
            f"cannot {doing}: the redis expansion to {record.after} is {record.state}"
            + (
                "; run the expand again (or undo it)"
                if record.state == ExpandState.EXPANDING
                else "; run that phase again to finish it"
            )
        )


def _check_invalid(run: _Phase, stats: MoveStats) -> None:
    if stats.invalid:
        raise MigrationFailed(
            f"{stats.invalid} keys matching {stats.pattern} hold no JSON object the transform"
            f" accepts (e.g. {', '.join(stats.examples)}); they were left as they are"
        )


def _save(run: _Phase, record: Expansion) -> None:
    write_expansion(run.client, run.version_key, record)


# -- the phases -----------------------------------------------------------------------------


def _sync_version(run: _Phase, version: str, *, prefer_new: bool) -> list[MoveStats]:
    """One catch-up pass of each move of ``version``: copies, changes and deletions."""
    out: list[MoveStats] = []
    for index, move in enumerate(run.moves(version)):
        stats = run.stats(version, index, move)
        layout = run.layout(version, index, move)
        run.syncer.copy_changed(layout, stats, prefer_target=prefer_new)
        run.syncer.delete_orphans(
            layout.tracking, move.old_prefix, move.new_prefix, stats, prefer=prefer_new
        )
        _check_invalid(run, stats)
        out.append(stats)
    return out


def expand(settings: Settings, *, on_progress: ProgressCallback | None = None) -> PhaseResult:
    """Write the new layout of every pending migration next to the old one.

    The version key moves to the newest version once every twin is written; the old keys
    are never modified. Re-running it after a crash resumes; with an expansion already
    done, or nothing pending, it does nothing. Refuses (:class:`StateError`) migrations
    :func:`expand_problems` reports.
    """
    with _phase(settings, "expand", on_progress) as run:
        record = read_expansion(run.client, run.version_key)
        if record is None:
            pending = [v for v in sorted(run.migrations) if _above(v, run.result.before)]
            if not pending:
                return run.result
            problems = _problems(run, pending)
            if problems:
                raise StateError("cannot expand: " + "; ".join(problems))
            record = new_expansion(run.result.before, pending)
            _save(run, record)
        elif record.state == ExpandState.EXPANDED:
            return run.result
        _require(record, ExpandState.EXPANDING, doing="expand")
        run.result.versions = list(record.versions)
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
    with _phase(settings, "catch-up", on_progress) as run:
        record = read_expansion(run.client, run.version_key)
        if record is None:
            return run.result
        _require(record, ExpandState.EXPANDED, doing="catch up")
        run.result.versions = list(record.versions)
        run.each_version(record.versions, lambda v: _sync_version(run, v, prefer_new=False))
        record.caught_up_at = time.time()
        record.catch_ups += 1
        _save(run, record)
        return run.result
    raise AssertionError("unreachable")  # pragma: no cover


def contract(settings: Settings, *, on_progress: ProgressCallback | None = None) -> PhaseResult:
    """Delete the old layout and the tracking data, once the old version is stopped.

    A last catch-up comes first; it leaves the twins the new version changed alone.
    """
    with _phase(settings, "contract", on_progress) as run:
        record = read_expansion(run.client, run.version_key)
        if record is None:
            return run.result
        _require(record, ExpandState.EXPANDED, ExpandState.CONTRACTING, doing="contract")
        run.result.versions = list(record.versions)
        if record.state == ExpandState.EXPANDED:
            run.each_version(record.versions, lambda v: _sync_version(run, v, prefer_new=True))
            record.state = ExpandState.CONTRACTING
            _save(run, record)

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
    with _phase(settings, "undo") as run:
        record = read_expansion(run.client, run.version_key)
        if record is None:
            return run.result
        _require(record, ExpandState.EXPANDING, ExpandState.EXPANDED, ExpandState.UNDOING,
                  doing="undo")  # fmt: skip
        carry = promoted or record.carry_back
        if record.state != ExpandState.UNDOING or carry != record.carry_back:
            record.state, record.carry_back = ExpandState.UNDOING, carry
            _save(run, record)
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


def _undo_version(run: _Phase, version: str, carry: bool) -> list[MoveStats]:
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
            _check_invalid(run, stats)
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


def _problems(run: _Phase, pending: list[str]) -> list[str]:
    named = [(f"{v} ({run.migrations[v].name})", run.migrations[v].moves) for v in pending]
    return expand_problems_of(named)


def expand_problems(settings: Settings) -> list[str]:
    """Why the pending Redis migrations cannot run in expand form; empty when they can.

    One line per problem: a migration written as ``up``/``down`` code, a move without a
    ``down`` transform, moves of pending migrations that touch each other's keys, an
    unknown data version, or an expansion still waiting for its contract.
    """
    section = engine.section_of(settings)
    migrations = {m.version: m for m in engine.load_all(settings)}
    client = engine.connect(settings, "redis expand plan")
    try:
        current = _read(client, lambda: engine.read_version(client, section.version_key))
        record = _read(client, lambda: read_expansion(client, section.version_key))
    finally:
        client.close()
    if current is not None and current not in migrations:
        return [engine.unknown_problem(current)]
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
    section = engine.section_of(settings)
    migrations = {m.version: m for m in engine.load_all(settings)}
    client = engine.connect(settings, "redis expand status")
    try:
        record: Expansion | None = _read(
            client, lambda: read_expansion(client, section.version_key)
        )
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
