"""Running Qdrant migrations under the release lock, recorded in the ledger.

``up`` of one migration runs its ``up(ctx)`` (see :mod:`releasegate.migrations.qdrant.context`)
and, only once ``ctx.new`` verified, moves the alias: delete and create in ONE
``update_collection_aliases`` call, so readers never see no collection. ``down`` moves the
alias back to the old collection, which must still exist, after the module's ``down(ctx)``.

The ledger mirrors every run: :func:`up`/:func:`down` (and the phases of
:mod:`releasegate.migrations.qdrant.phases`) open a release (kind ``migrate``, summary
``{"store": "qdrant"}``) under the release lock and record one event per migration
(``qdrant upgrade NNNN``, ``qdrant downgrade NNNN``, ``qdrant expand NNNN``, ...) with
its duration and counts; a copy also records ``qdrant copy NNNN`` when it starts, which
is how a later run knows that a leftover new collection is an interrupted copy that may be
resumed. The lifecycle events are also where an expanded migration's digest lives (see
:func:`lifecycle`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from releasegate.config import Settings
from releasegate.errors import ConfigError, LockNotObtained, MigrationFailed, StateError
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.ledger.schema import LEDGER_SCHEMA
from releasegate.lock import HeldLock, service_lock
from releasegate.migrations.qdrant.context import MigrationContext, Mode
from releasegate.migrations.qdrant.loading import (
    BASE,
    QdrantMigration,
    QdrantStatus,
    VerificationFailed,
    current_status,
    load_migrations,
)
from releasegate.runinfo import git_sha, performer
from releasegate.stores.qdrant import QdrantStore, first_line, using
from releasegate.stores.qdrant_points import BucketDigest


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class QdrantStepResult:
    """One migration applied or undone, as recorded in the ledger."""

    version: str
    collection: str
    direction: Direction
    status: StepStatus
    duration_s: float
    alias_target: str  # where the alias points after the step
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "direction": str(self.direction),
            "status": str(self.status),
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class QdrantMigrateResult:
    """What :func:`up` or :func:`down` did, and the ledger release that records it."""

    release_id: int
    direction: Direction
    before: str
    after: str | None = None
    steps: list[QdrantStepResult] = field(default_factory=list)
    lock_wait_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "direction": str(self.direction),
            "before": self.before,
            "after": self.after,
            "lock_wait_s": round(self.lock_wait_s, 3),
            "steps": [s.to_dict() for s in self.steps],
        }


QdrantStepCallback = Callable[[QdrantStepResult], None]

# The ledger steps of a migration's lifecycle: ``qdrant <kind> <version>``.
COPY, UPGRADE, DOWNGRADE = "copy", "upgrade", "downgrade"
EXPAND, SWITCH, CONTRACT, UNDO, CARRY_BACK = "expand", "switch", "contract", "undo", "carry back"
_KINDS = (COPY, UPGRADE, DOWNGRADE, EXPAND, SWITCH, CONTRACT, UNDO, CARRY_BACK)


def step_name(kind: str, version: str) -> str:
    return f"qdrant {kind} {version}"


@dataclass(frozen=True)
class LifecycleEvent:
    """The latest ledger event of a migration's lifecycle."""

    kind: str
    status: str
    detail: dict[str, Any]


def lifecycle(ledger: Ledger, service: str, version: str, *, failed: bool) -> LifecycleEvent | None:
    """The latest lifecycle event of ``version`` (``failed=False``: the latest that did not fail).

    What the collections alone cannot tell: whether a ``name__vN+1`` beside the live one is
    an interrupted copy (``copy``), expanded and verified (``expand``, with the digest of
    the old collection it reflects) or switched to (``switch``, with the digest of the new
    collection when the alias moved, for carrying writes back).
    """
    statuses = (
        [str(s) for s in StepStatus]
        if failed
        else [str(s) for s in StepStatus if s is not StepStatus.FAILED]
    )
    row = ledger.conn.execute(
        f"SELECT e.step, e.status, e.detail FROM {LEDGER_SCHEMA}.events e"
        f" JOIN {LEDGER_SCHEMA}.releases r ON r.id = e.release_id"
        " WHERE r.service = %s AND e.step = ANY(%s) AND e.status = ANY(%s)"
        " ORDER BY e.id DESC LIMIT 1",
        (service, [step_name(k, version) for k in _KINDS], statuses),
    ).fetchone()
    if row is None:
        return None
    return LifecycleEvent(row[0].split(" ", 1)[1].rsplit(" ", 1)[0], row[1], dict(row[2] or {}))


def recorded_digest(event: LifecycleEvent | None, kind: str, key: str) -> BucketDigest | None:
    """The digest ``key`` of ``event`` if it is a successful ``kind`` event."""
    if event is None or event.kind != kind or event.status != str(StepStatus.OK):
        return None
    data = event.detail.get(key)
    return BucketDigest.from_data(data) if isinstance(data, dict) else None


def _may_resume(ledger: Ledger, service: str, version: str) -> bool:
    """Whether the last recorded run of ``version`` is a copy that never finished."""
    last = lifecycle(ledger, service, version, failed=True)
    if last is None:
        return False
    if last.kind == COPY:
        return True  # started copying, then the process died before recording an outcome
    return (
        last.kind in (UPGRADE, EXPAND)
        and last.status == str(StepStatus.FAILED)
        and last.detail.get("phase") == "copy"
    )


class Runner:
    """Applies or undoes migrations inside one ledger release, under the release lock."""

    def __init__(
        self,
        settings: Settings,
        store: QdrantStore,
        ledger: Ledger,
        result: QdrantMigrateResult,
        on_step: QdrantStepCallback | None,
        lock: HeldLock,
        migrations: list[QdrantMigration],
    ) -> None:
        assert settings.raw.qdrant is not None
        self.lock = lock
        self.migrations = migrations
        self.settings = settings
        self.section = settings.raw.qdrant
        self.store = store
        self.ledger = ledger
        self.result = result
        self.on_step = on_step

    def status(self) -> QdrantStatus:
        return current_status(self.store, self.migrations)

    def last(self, m: QdrantMigration) -> LifecycleEvent | None:
        return lifecycle(self.ledger, self.settings.service, m.version, failed=False)

    def event(self, m: QdrantMigration, kind: str, took: float, detail: dict[str, Any]) -> None:
        self.ledger.record_event(
            self.result.release_id, step_name(kind, m.version), StepStatus.OK, took, detail
        )

    def check_lock(self) -> None:
        """Stop (recording why) when the release lock was lost between migrations."""
        try:
            self.lock.ensure_held()
        except LockNotObtained as exc:
            now = self.status().version
            self.result.after = now
            self.ledger.record_event(
                self.result.release_id, "lock", StepStatus.FAILED, None, {"error": str(exc)}
            )
            self.ledger.finish_release(
                self.result.release_id,
                Outcome.FAILED,
                {"store": "qdrant", "error": str(exc)},
                qdrant_after=now,
            )
            raise

    def _context(
        self, m: QdrantMigration, mode: Mode, digest: BucketDigest | None
    ) -> MigrationContext:
        def copy_started(detail: dict[str, Any]) -> None:
            self.ledger.record_event(
                self.result.release_id, step_name(COPY, m.version), StepStatus.INFO, None, detail
            )

        return MigrationContext(
            self.store,
            m,
            batch_size=self.section.batch_size,
            verify_sample=self.section.verify_sample,
            may_resume=mode is not Mode.SWITCH
            and _may_resume(self.ledger, self.settings.service, m.version),
            on_copy_start=copy_started,
            mode=mode,
            digest=digest,
        )

    def up(self, m: QdrantMigration, mode: Mode = Mode.BUILD) -> QdrantStepResult:
        """Run ``up(ctx)`` in ``mode``; BUILD and SWITCH then move the alias.

        A BUILD of a migration that was expanded (and not switched) runs as a SWITCH, so
        that the old version's writes since the expand are not lost.
        """
        started = time.monotonic()
        kind = {Mode.BUILD: UPGRADE, Mode.EXPAND: EXPAND, Mode.SWITCH: SWITCH}[mode]
        digest = None
        if mode is not Mode.EXPAND:
            digest = recorded_digest(self.last(m), EXPAND, "digest")
            if digest is None and mode is Mode.SWITCH:
                raise StateError(f"Qdrant migration {m.version} is not expanded: nothing to switch")
            if digest is not None and self.store.exists(m.new):
                mode = Mode.SWITCH
        ctx = self._context(m, mode, digest)
        try:
            m.module.up(ctx)
            if not ctx.verified:
                raise VerificationFailed(
                    f"up() of {m.path.name} did not verify {m.new} (call ctx.rebuild or ctx.verify)"
                )
            if mode is Mode.EXPAND:
                assert ctx.digest is not None  # copy() records it, verify() catches up
                ctx.report["digest"] = ctx.digest.to_data()
                return self._ok(m, kind, time.monotonic() - started, ctx, m.old)
            if mode is Mode.SWITCH:
                ctx.phase = "digest"  # what carrying writes back after promotion starts from
                new_digest = BucketDigest.of(self.store, m.new, batch_size=self.section.batch_size)
                ctx.report["new_digest"] = new_digest.to_data()
            ctx.phase = "swap"
            self.lock.ensure_held()  # the swap is the commit point: only under the lock
            self.store.set_aliases({m.collection: m.new})
        except Exception as exc:
            if isinstance(exc, VerificationFailed) and mode is not Mode.SWITCH:
                if self.store.exists(m.new):
                    self.store.drop_collection(m.new)  # known wrong: never resume from it
                    ctx.report["dropped_new"] = True
            elif ctx.phase == "create":
                ctx.phase = "copy"  # nothing copied yet: the next run may start over or resume
            self._fail(m, kind, Direction.UP, exc, time.monotonic() - started, ctx)
        return self._ok(m, kind, time.monotonic() - started, ctx, m.new)

    def down(self, m: QdrantMigration) -> QdrantStepResult:
        started = time.monotonic()
        ctx = self._context(m, Mode.BUILD, None)
        ctx.phase = "down"
        try:
            if not self.store.exists(m.old):
                raise StateError(f"{m.old} no longer exists: the alias cannot move back to it")
            m.module.down(ctx)
            self.store.set_aliases({m.collection: m.old})
            if ctx.drop_new and self.store.exists(m.new):
                self.store.drop_collection(m.new)
                ctx.report["dropped_new"] = True
        except Exception as exc:
            self._fail(m, DOWNGRADE, Direction.DOWN, exc, time.monotonic() - started, ctx)
        return self._ok(m, DOWNGRADE, time.monotonic() - started, ctx, m.old)

    def _record(self, m: QdrantMigration, kind: str, outcome: QdrantStepResult) -> None:
        self.result.steps.append(outcome)
        detail = {"collection": m.collection, "doc": m.doc, "alias_target": outcome.alias_target}
        detail |= outcome.detail
        if outcome.error:
            detail["error"] = outcome.error
        self.ledger.record_event(
            self.result.release_id,
            step_name(kind, m.version),
            outcome.status,
            outcome.duration_s,
            detail,
        )
        if self.on_step:
            self.on_step(outcome)

    def _ok(
        self, m: QdrantMigration, kind: str, took: float, ctx: MigrationContext, at: str
    ) -> QdrantStepResult:
        direction = Direction.DOWN if kind == DOWNGRADE else Direction.UP
        detail = {"from": m.old, "to": m.new, **ctx.report}
        outcome = QdrantStepResult(
            m.version, m.collection, direction, StepStatus.OK, took, at, detail
        )
        self._record(m, kind, outcome)
        return outcome

    def _fail(
        self,
        m: QdrantMigration,
        kind: str,
        direction: Direction,
        exc: Exception,
        took: float,
        ctx: MigrationContext,
    ) -> None:
        if isinstance(exc, NotImplementedError) and direction is Direction.DOWN:
            error = f"irreversible: {first_line(exc)}"
        else:
            error = f"{type(exc).__name__}: {first_line(exc)}"
        at = self.store.aliases().get(m.collection, "(no alias)")
        detail = {"from": m.old, "to": m.new, "phase": ctx.phase, **ctx.report}
        outcome = QdrantStepResult(
            m.version, m.collection, direction, StepStatus.FAILED, took, at, detail, error
        )
        self._record(m, kind, outcome)
        self.fail_release(error, failed_version=m.version)
        kept = ""
        if ctx.mode is Mode.SWITCH:
            kept = f"; {m.new} is kept and the next switch catches up again"
        elif ctx.phase == "copy" and self.store.exists(m.new):
            kept = f"; {m.new} is kept and the next run resumes the copy"
        raise MigrationFailed(
            f"Qdrant migration {m.version} failed: {error}; alias {m.collection} still points"
            f" at {at}{kept} (ledger release {self.result.release_id})"
        ) from exc

    def fail_release(self, error: str, **summary: Any) -> None:
        now = self.status().version
        self.result.after = now
        self.ledger.finish_release(
            self.result.release_id,
            Outcome.FAILED,
            {"store": "qdrant", **summary, "error": error},
            qdrant_after=now,
        )

    def succeed(self, **summary: Any) -> None:
        self.result.after = self.status().version
        self.ledger.finish_release(
            self.result.release_id,
            Outcome.SUCCEEDED,
            {"store": "qdrant", **summary},
            qdrant_after=self.result.after,
        )


@dataclass
class Locked:
    """What a run holds: the release lock, the ledger, the store, the migrations."""

    settings: Settings
    store: QdrantStore
    ledger: Ledger
    lock: HeldLock
    migrations: list[QdrantMigration]

    def status(self) -> QdrantStatus:
        return current_status(self.store, self.migrations)

    def start(self, direction: Direction, on_step: QdrantStepCallback | None = None) -> Runner:
        """Open the run's ledger release (kind ``migrate``); finish it with the runner."""
        now = self.status()
        release_id = self.ledger.start_release(
            self.settings.service,
            "migrate",
            performer(),
            git_sha=git_sha(self.settings.root),
            qdrant_before=now.version,
        )
        result = QdrantMigrateResult(
            release_id, direction, now.version, lock_wait_s=self.lock.waited
        )
        self.ledger.record_event(
            release_id, "lock", StepStatus.OK, self.lock.waited, {"service": self.settings.service}
        )
        return Runner(
            self.settings, self.store, self.ledger, result, on_step, self.lock, self.migrations
        )


@contextmanager
def locked(settings: Settings, purpose: str, store: QdrantStore | None) -> Iterator[Locked]:
    """Hold the release lock, the ledger and the store for the block."""
    migrations = load_migrations(settings)
    with (
        service_lock(settings, purpose) as held,
        Ledger.open(settings.postgres_url()) as ledger,
        using(settings, store) as st,
    ):
        yield Locked(settings, st, ledger, held, migrations)


def blocking_problem(now: QdrantStatus, path: list[QdrantMigration]) -> str | None:
    """The first status problem of a collection that ``path`` would change."""
    return next(
        (
            s.problem
            for s in now.collections
            if s.problem and any(m.collection == s.collection for m in path)
        ),
        None,
    )


def _migrate(
    settings: Settings,
    direction: Direction,
    choose: Callable[[QdrantStatus], list[QdrantMigration]],
    store: QdrantStore | None,
    on_step: QdrantStepCallback | None,
) -> QdrantMigrateResult:
    with locked(settings, f"qdrant migrate {direction}", store) as held:
        now = held.status()
        path = choose(now)
        problem = blocking_problem(now, path)
        if problem:
            raise StateError(problem)
        runner = held.start(direction, on_step)
        for m in path:
            runner.check_lock()
            runner.up(m) if direction is Direction.UP else runner.down(m)
        runner.succeed(direction=str(direction), versions=[m.version for m in path])
        return runner.result


def _known(migrations: list[QdrantMigration], version: str) -> str:
    if version == BASE or any(m.version == version for m in migrations):
        return version
    raise ConfigError(f"unknown Qdrant migration version {version!r}")


def up(
    settings: Settings,
    to: str | None = None,
    on_step: QdrantStepCallback | None = None,
    *,
    store: QdrantStore | None = None,
) -> QdrantMigrateResult:
    """Apply pending Qdrant migrations in version order, up to ``to`` (default: all).

    Holds the release lock (Postgres), records a ``migrate`` release with
    ``qdrant_before``/``qdrant_after`` and one event per migration. A migration that fails
    (or fails verification) raises :class:`MigrationFailed`; its alias has not moved. A
    migration already expanded (:func:`~releasegate.migrations.qdrant.phases.expand`) is
    caught up and switched rather than copied again. ``store`` lets a caller that already
    holds the Qdrant client pass it in.
    """
    if to is not None:
        _known(load_migrations(settings), to)

    def path(now: QdrantStatus) -> list[QdrantMigration]:
        return [m for m in now.pending if to is None or m.version <= to]

    return _migrate(settings, Direction.UP, path, store, on_step)


def down(
    settings: Settings,
    to: str,
    on_step: QdrantStepCallback | None = None,
    *,
    store: QdrantStore | None = None,
) -> QdrantMigrateResult:
    """Undo applied Qdrant migrations newer than ``to`` (a version or ``base``), newest first.

    Each moves its alias back to the previous collection (which must still exist) in one
    atomic call, after the migration's ``down(ctx)``. A ``down`` raising
    ``NotImplementedError`` is irreversible and stops there with :class:`MigrationFailed`.
    Writes made to the new collection are not carried back (see
    :func:`~releasegate.migrations.qdrant.phases.undo` for that).
    """
    _known(load_migrations(settings), to)

    def path(now: QdrantStatus) -> list[QdrantMigration]:
        return [m for m in reversed(now.applied) if to == BASE or m.version > to]

    return _migrate(settings, Direction.DOWN, path, store, on_step)
