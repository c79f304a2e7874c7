"""The frame every expand phase runs in: lock, ledger release, client, result, failures.

:func:`phase` opens it; each phase then works version by version
(:meth:`Phase.each_version`), one ledger event per version. See :mod:`.phases`.
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
from releasegate.migrations.redis import versions
from releasegate.migrations.redis.moves import (
    ExpandState,
    Expansion,
    KeyMove,
    tracking_key,
    write_expansion,
)
from releasegate.migrations.redis.sync import Layout, MoveStats, Syncer
from releasegate.runinfo import git_sha, performer
from releasegate.stores import redis as stores

ProgressCallback = Callable[[MoveStats], None]

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
    scan: str = "full"  # catch-up: "full" (digests of every key) or "notified" (watcher)

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
            "before": versions.format_version(self.before),
            "after": versions.format_version(self.after),
            "versions": self.versions,
            "duration_s": round(self.duration_s, 3),
            "release_id": self.release_id,
            "scan": self.scan,
            **self.counts(),
            "moves": [m.to_dict() for m in self.moves],
        }


# -- the shared frame of every phase ----------------------------------------------------------


@dataclass
class Phase:
    settings: Settings
    section: RedisSection
    client: redis.Redis
    held: HeldLock
    ledger: Ledger
    result: PhaseResult
    syncer: Syncer
    migrations: dict[str, versions.RedisMigration]

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
def phase(
    settings: Settings, phase: str, on_progress: ProgressCallback | None = None
) -> Iterator[Phase]:
    """Lock, ledger release and Redis client of one phase; failures recorded and explained."""
    section = versions.section_of(settings)
    migrations = {m.version: m for m in versions.load_all(settings)}
    pg_url = settings.postgres_url()
    db.check_url(pg_url, f"${settings.raw.postgres.url_env}")
    client = versions.connect(settings, f"redis {phase}")
    started = time.monotonic()
    try:
        with (
            service_lock(settings, f"redis {phase}") as held,
            Ledger.open(pg_url) as ledger,
        ):
            current = read(client, lambda: versions.read_version(client, section.version_key))
            result = PhaseResult(phase, current, current)
            result.release_id = ledger.start_release(
                settings.service,
                "migrate",
                performer(),
                git_sha=git_sha(settings.root),
                redis_before=versions.format_version(current),
            )
            ledger.record_event(
                result.release_id, "lock", StepStatus.OK, held.waited, {"service": settings.service}
            )
            syncer = Syncer(client, section.batch_size, on_progress)
            run = Phase(settings, section, client, held, ledger, result, syncer, migrations)
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
                redis_after=versions.format_version(result.after),
            )
    finally:
        client.close()


def _fail(run: Phase, exc: BaseException) -> None:
    result = run.result
    error = _error_text(exc)
    if isinstance(exc, redis.RedisError):
        error = db.first_line(stores.infra_error(run.client, exc, f"the redis {result.phase}"))
    with suppress(redis.RedisError):
        result.after = versions.read_version(run.client, run.version_key)
    assert result.release_id is not None
    run.ledger.finish_release(
        result.release_id,
        Outcome.FAILED,
        {"store": "redis", "phase": result.phase, "error": error, "keys": result.counts()},
        redis_after=versions.format_version(result.after),
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


def read(client: redis.Redis, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except redis.RedisError as exc:
        raise stores.infra_error(client, exc, "reading the data version") from None


def require(record: Expansion, *states: str, doing: str) -> None:
    if record.state not in states:
        raise StateError(
            f"cannot {doing}: the redis expansion to {record.after} is {record.state}"
            + (
                "; run the expand again (or undo it)"
                if record.state == ExpandState.EXPANDING
                else "; run that phase again to finish it"
            )
        )


def check_invalid(run: Phase, stats: MoveStats) -> None:
    if stats.invalid:
        raise MigrationFailed(
            f"{stats.invalid} keys matching {stats.pattern} hold no JSON object the transform"
            f" accepts (e.g. {', '.join(stats.examples)}); they were left as they are"
        )


def save(run: Phase, record: Expansion) -> None:
    write_expansion(run.client, run.version_key, record)
