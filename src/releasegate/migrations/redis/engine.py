"""Versioned Redis data migrations: up and down, with the ledger (status: :mod:`.versions`).

A migration is a Python module in the ``redis.migrations`` folder named ``NNNN_name.py``
(``0001_sessions_snake_case.py``) with a docstring and either a ``MOVES`` list of key moves
(:mod:`.moves`; run here as an atomic rename + transform per key, and in a release in
expand form by :mod:`.phases`) or two functions, ``up(ctx)`` and ``down(ctx)``, where
``ctx`` is a :class:`MigrationContext`. The version reached is kept in Redis under
``redis.version_key`` (``"0001"``; absent = base) and mirrored in the ledger. While a
release's expansion is open (old layout kept, contract pending), ``up`` and ``down``
refuse to change anything and :func:`status` says so.

``up`` and ``down`` mirror ``releasegate migrate up/down`` for Postgres
(:mod:`releasegate.migrations.commands`): they hold the service's release lock, open a
ledger release of kind ``migrate`` with ``redis_before``/``redis_after``, and record one
event per version (``redis upgrade 0001``) with its duration and key counts. A version
that fails or is interrupted leaves Redis at the previous version with its progress in a
checkpoint hash; running the same command again resumes it (see
:mod:`releasegate.migrations.redis.helpers` for why that is safe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn

import redis

from releasegate import db
from releasegate.config import RedisSection, Settings
from releasegate.errors import (
    ConfigError,
    LockNotObtained,
    MigrationFailed,
    ReleasegateError,
    StateError,
)
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.lock import HeldLock, service_lock
from releasegate.migrations.redis.checkpoint import (
    Checkpoint,
    ProgressCallback,
    StepStats,
    checkpoint_key,
)
from releasegate.migrations.redis.helpers import Helpers
from releasegate.migrations.redis.moves import read_expansion
from releasegate.migrations.redis.versions import (
    BASE,
    RedisMigration,
    connect,
    format_version,
    load_all,
    read_version,
    section_of,
    unknown_problem,
)
from releasegate.runinfo import git_sha, performer
from releasegate.stores import redis as stores

log = logging.getLogger("releasegate.redis.migrations")


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


# -- the context handed to migrations ---------------------------------------------------------


class MigrationContext(Helpers):
    """What ``up(ctx)`` and ``down(ctx)`` receive.

    - ``ctx.client``: the ``redis.Redis`` client (bytes in, bytes out);
    - ``ctx.batch_size``: keys per SCAN page and per atomic batch (``redis.batch_size``);
    - ``ctx.version`` and ``ctx.direction`` (``"up"``/``"down"``);
    - ``ctx.log(message)``: a progress line (logger ``releasegate.redis.migrations``);
    - the helpers: :meth:`rename_keys`, :meth:`transform_json`,
      :meth:`rename_and_transform`, :meth:`set_ttl` (see
      :class:`~releasegate.migrations.redis.helpers.Helpers`).

    Anything a migration does directly with ``ctx.client`` must be idempotent itself:
    only the helpers are checkpointed.
    """

    def log(self, message: str) -> None:
        log.info("redis %s %s: %s", self.direction, self.version, message)


# -- up and down --------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisStepResult:
    """One version applied or undone (or failed), as recorded in the ledger."""

    version: str
    direction: Direction
    status: StepStatus
    duration_s: float
    keys: dict[str, int]  # changed / scanned / unchanged / gone / raced / conflicts / invalid
    steps: list[StepStats]
    resumed: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "direction": str(self.direction),
            "status": str(self.status),
            "duration_s": round(self.duration_s, 3),
            "keys": self.keys,
            "resumed": self.resumed,
            "error": self.error,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass
class RedisMigrateResult:
    """What :func:`up` or :func:`down` did, and the ledger release that records it."""

    release_id: int
    direction: Direction
    before: str | None
    after: str | None = None
    steps: list[RedisStepResult] = field(default_factory=list)
    lock_wait_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": "redis",
            "release_id": self.release_id,
            "direction": str(self.direction),
            "before": format_version(self.before),
            "after": format_version(self.after),
            "lock_wait_s": round(self.lock_wait_s, 3),
            "steps": [s.to_dict() for s in self.steps],
        }


StepCallback = Callable[[RedisStepResult], None]

_KEY_FIGURES = ("scanned", "changed", "unchanged", "gone", "raced", "conflicts", "invalid")


def _key_totals(steps: list[StepStats]) -> dict[str, int]:
    return {name: sum(int(getattr(s, name)) for s in steps) for name in _KEY_FIGURES}


def _set_version(client: redis.Redis, version_key: str, version: str | None, ckpt: str) -> None:
    """Record the version reached and drop its checkpoint, in one transaction."""
    pipe = client.pipeline(transaction=True)
    if version is None:
        pipe.delete(version_key)
    else:
        pipe.set(version_key, version)
    pipe.delete(ckpt)
    pipe.execute()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ReleasegateError):
        return db.first_line(exc)
    return f"{type(exc).__name__}: {db.first_line(exc)}"


def _ensure_lock(held: HeldLock, ledger: Ledger, result: RedisMigrateResult) -> None:
    """Never go on once another runner could take over: record the loss and stop."""
    try:
        held.ensure_held()
    except LockNotObtained as exc:
        ledger.record_event(result.release_id, "lock", StepStatus.FAILED, None, {"error": str(exc)})
        ledger.finish_release(
            result.release_id,
            Outcome.FAILED,
            {"store": "redis", "error": str(exc)},
            redis_after=format_version(result.after),
        )
        raise


Chooser = Callable[[list[RedisMigration], str | None], list[tuple[RedisMigration, str | None]]]


def _migrate(
    settings: Settings,
    direction: Direction,
    migrations: list[RedisMigration],
    choose: Chooser,
    on_step: StepCallback | None,
    on_progress: ProgressCallback | None,
) -> RedisMigrateResult:
    section = section_of(settings)
    pg_url = settings.postgres_url()
    db.check_url(pg_url, f"${settings.raw.postgres.url_env}")
    purpose = f"redis migrate {direction}"
    client = connect(settings, f"migrate {direction}")
    try:
        with (
            service_lock(settings, purpose) as held,
            Ledger.open(pg_url) as ledger,
        ):
            try:
                current = read_version(client, section.version_key)
                run_id = stores.server_info(client)["run_id"]
            except redis.RedisError as exc:
                raise stores.infra_error(client, exc, "reading the data version") from None
            if current is not None and current not in {m.version for m in migrations}:
                raise StateError(unknown_problem(current))
            path = choose(migrations, current)
            expansion = read_expansion(client, section.version_key)
            if expansion is not None and path:
                raise StateError(
                    f"redis data version {expansion.after} is expanded ({expansion.state}):"
                    " the old layout is kept for a release in progress; finish it (finalize"
                    " contracts) or undo it before migrating this store by hand"
                )
            release_id = ledger.start_release(
                settings.service,
                "migrate",
                performer(),
                git_sha=git_sha(settings.root),
                redis_before=format_version(current),
            )
            result = RedisMigrateResult(
                release_id, direction, current, after=current, lock_wait_s=held.waited
            )
            ledger.record_event(
                release_id, "lock", StepStatus.OK, held.waited, {"service": settings.service}
            )
            for migration, version_after in path:
                _ensure_lock(held, ledger, result)
                run = _Run(client, section, ledger, result, run_id, on_step, on_progress)
                run.one(migration, version_after)
                result.after = version_after
            result.after = read_version(client, section.version_key)
            ledger.finish_release(
                release_id,
                Outcome.SUCCEEDED,
                {
                    "store": "redis",
                    "direction": str(direction),
                    "versions": [s.version for s in result.steps],
                    "keys": _key_totals([st for s in result.steps for st in s.steps]),
                },
                redis_after=format_version(result.after),
            )
            return result
    finally:
        client.close()


class _Run:
    """Runs one version after another within a release, recording each."""

    def __init__(
        self,
        client: redis.Redis,
        section: RedisSection,
        ledger: Ledger,
        result: RedisMigrateResult,
        run_id: str,
        on_step: StepCallback | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.client = client
        self.section = section
        self.ledger = ledger
        self.result = result
        self.run_id = run_id
        self.on_step = on_step
        self.on_progress = on_progress

    def one(self, migration: RedisMigration, version_after: str | None) -> None:
        direction = self.result.direction
        verb = "upgrade" if direction is Direction.UP else "downgrade"
        step_name = f"redis {verb} {migration.version}"
        ckpt_key = checkpoint_key(self.section.version_key, migration.version, str(direction))
        started = time.monotonic()
        ctx: MigrationContext | None = None
        try:
            checkpoint = Checkpoint(self.client, ckpt_key, self.run_id)
            ctx = MigrationContext(
                self.client,
                version=migration.version,
                direction=str(direction),
                checkpoint=checkpoint,
                batch_size=self.section.batch_size,
                protected_prefix=self.section.version_key.encode(),
                on_progress=self.on_progress,
            )
            run_migration(migration, direction, ctx)
            _set_version(self.client, self.section.version_key, version_after, ckpt_key)
        except BaseException as exc:
            self._fail(migration, step_name, exc, time.monotonic() - started, ctx)
        assert ctx is not None
        outcome = RedisStepResult(
            migration.version,
            direction,
            StepStatus.OK,
            time.monotonic() - started,
            _key_totals(ctx.steps),
            ctx.steps,
            resumed=ctx.checkpoint.exists,
        )
        _record(self.ledger, self.result, step_name, migration, outcome, self.on_step)

    def _fail(
        self,
        migration: RedisMigration,
        step_name: str,
        exc: BaseException,
        took: float,
        ctx: MigrationContext | None,
    ) -> NoReturn:
        result = self.result
        error = _error_text(exc)
        if isinstance(exc, redis.RedisError):
            doing = f"running {migration.path.name}"
            error = db.first_line(stores.infra_error(self.client, exc, doing))
        steps = ctx.steps if ctx is not None else []
        outcome = RedisStepResult(
            migration.version,
            result.direction,
            StepStatus.FAILED,
            took,
            _key_totals(steps),
            steps,
            resumed=bool(ctx and ctx.checkpoint.exists),
            error=error,
        )
        _record(self.ledger, result, step_name, migration, outcome, self.on_step)
        try:
            now = read_version(self.client, self.section.version_key)
        except redis.RedisError:
            now = result.after  # Redis is gone: the last version known to be reached
        result.after = now
        self.ledger.finish_release(
            result.release_id,
            Outcome.FAILED,
            {"store": "redis", "failed_version": migration.version, "error": error},
            redis_after=format_version(now),
        )
        if not isinstance(exc, Exception):
            raise exc  # KeyboardInterrupt and friends: recorded, then let through
        raise MigrationFailed(
            f"redis migration {migration.version} ({result.direction}) failed: {error};"
            f" Redis stays at data version {format_version(now)} with its progress"
            " checkpointed: run the same command again to resume"
            f" (ledger release {result.release_id})"
        ) from exc


def _record(
    ledger: Ledger,
    result: RedisMigrateResult,
    step_name: str,
    migration: RedisMigration,
    outcome: RedisStepResult,
    on_step: StepCallback | None,
) -> None:
    result.steps.append(outcome)
    detail: dict[str, Any] = {
        "store": "redis",
        "version": migration.version,
        "doc": migration.doc,
        "keys": outcome.keys,
        "resumed": outcome.resumed,
        "steps": [s.to_dict() for s in outcome.steps],
    }
    if outcome.error:
        detail["error"] = outcome.error
    ledger.record_event(result.release_id, step_name, outcome.status, outcome.duration_s, detail)
    if on_step is not None:
        on_step(outcome)


def run_migration(migration: RedisMigration, direction: Direction, ctx: MigrationContext) -> None:
    """Run one migration standalone: its code, or each move as an atomic rename + transform
    (newest move first on the way down)."""
    if migration.moves is None:
        getattr(migration.module, str(direction))(ctx)
        return
    if direction is Direction.UP:
        for move in migration.moves:
            ctx.rename_and_transform(move.pattern, move.old_prefix, move.new_prefix, move.up)
        return
    for move in reversed(migration.moves):
        if move.down is None:
            raise MigrationFailed(
                f"redis migration {migration.version}: the move {move.describe()} has no down"
                " transform"
            )
        ctx.rename_and_transform(move.new_pattern, move.new_prefix, move.old_prefix, move.down)


def _find(migrations: list[RedisMigration], version: str) -> str:
    wanted = version.zfill(4) if version.isdigit() else version
    if wanted in (BASE, "0000"):
        return BASE
    if wanted not in {m.version for m in migrations}:
        known = ", ".join(m.version for m in migrations) or "none"
        raise ConfigError(f"unknown redis data version {version!r} (known: {known}, base)")
    return wanted


def up(
    settings: Settings,
    to: str | None = None,
    *,
    on_step: StepCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> RedisMigrateResult:
    """Apply pending Redis migrations, oldest first, up to ``to`` (default: the newest).

    Holds the release lock, records a ledger release (kind ``migrate``, ``redis_before`` /
    ``redis_after``) with one event per version, and sets ``redis.version_key`` after each
    version. ``on_step`` is called after each version, ``on_progress`` after each batch
    (an exception raised there interrupts the run like a crash would). A failure raises
    :class:`MigrationFailed`; Redis stays at the last version completed and the next run
    resumes the failed one from its checkpoint.
    """
    migrations = load_all(settings)
    target = _find(migrations, to) if to is not None else None

    def choose(
        migrations: list[RedisMigration], current: str | None
    ) -> list[tuple[RedisMigration, str | None]]:
        if target == BASE:
            raise ConfigError("redis migrate up needs a version above the current one")
        if target is not None and current is not None and target < current:
            raise ConfigError(
                f"redis data version {target} is below the current version {current}:"
                " use 'migrate down'"
            )
        return [
            (m, m.version)
            for m in migrations
            if (current is None or m.version > current) and (target is None or m.version <= target)
        ]

    return _migrate(settings, Direction.UP, migrations, choose, on_step, on_progress)


def down(
    settings: Settings,
    to: str,
    *,
    on_step: StepCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> RedisMigrateResult:
    """Undo Redis migrations, newest first, down to version ``to`` (or ``base``).

    Same lock, ledger records, checkpoints and failure handling as :func:`up`; each
    version's ``down(ctx)`` runs and the version key steps back to the one below it
    (deleted at base).
    """
    migrations = load_all(settings)
    target = _find(migrations, to)

    def choose(
        migrations: list[RedisMigration], current: str | None
    ) -> list[tuple[RedisMigration, str | None]]:
        if target != BASE and current is not None and target > current:
            raise ConfigError(
                f"redis data version {target} is above the current version {current}:"
                " use 'migrate up'"
            )
        applied = [m for m in migrations if current is not None and m.version <= current]
        path: list[tuple[RedisMigration, str | None]] = []
        for i in range(len(applied) - 1, -1, -1):
            if target != BASE and applied[i].version <= target:
                break
            path.append((applied[i], applied[i - 1].version if i > 0 else None))
        return path

    return _migrate(settings, Direction.DOWN, migrations, choose, on_step, on_progress)
