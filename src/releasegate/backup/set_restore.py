"""Restoring a backup set: the loss report, the confirmations, then all or nothing.

Each chosen store is staged beside what the service reads, then committed; a failure
anywhere aborts what is staged and undoes what was committed (:func:`unwind`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from releasegate import db
from releasegate.backup.base import Difference, StagedRestore, StoreBackup
from releasegate.backup.loss import LossReport, loss_report, traffic
from releasegate.backup.manifest import Manifest
from releasegate.backup.sets import (
    check_files,
    chosen_stores,
    configured_stores,
    ledger_versions,
    open_set,
    store_module,
)
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError, ReleasegateError, RollbackFailed
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.lock import HeldLock, service_lock
from releasegate.runinfo import git_sha, performer


def _damage_message(set_id: str, damaged: list[Difference]) -> str:
    first = damaged[0]
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    return (
        f"backup set {set_id} is damaged, nothing restored: {first.store} {first.item}:"
        f" expected {first.expected}, found {first.actual}{more}"
    )


# -- restore ------------------------------------------------------------------------------


@dataclass
class RestoreResult:
    """What :func:`restore` did, store by store, and the ledger release recording it."""

    set_id: str
    path: Path
    release_id: int
    loss: LossReport
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    versions_before: dict[str, str | None] = field(default_factory=dict)
    versions_after: dict[str, str | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    while_live: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "set_id": self.set_id,
            "path": str(self.path),
            "release_id": self.release_id,
            "loss": self.loss.to_dict(),
            "stores": self.stores,
            "skipped": self.skipped,
            "versions_before": self.versions_before,
            "versions_after": self.versions_after,
            "timings": self.timings,
            "while_live": self.while_live,
            "seconds": round(self.seconds, 3),
        }


def live_versions(settings: Settings, stores: Sequence[str]) -> dict[str, str | None]:
    """The Alembic revision and the Redis/Qdrant data-migration versions now (None if unknown)."""
    versions: dict[str, str | None] = {}
    for store in stores:
        try:
            if store == "postgres":
                from releasegate.backup.postgres_contents import alembic_revisions, format_alembic

                url = settings.postgres_url()
                with db.connect(
                    url, "restore", connect_timeout=settings.raw.postgres.connect_timeout
                ) as conn:
                    versions["alembic"] = format_alembic(alembic_revisions(conn))
            elif store == "redis":
                versions["redis"] = _redis_version(settings)
            elif store == "qdrant":
                versions["qdrant"] = _qdrant_version(settings)
        except (ReleasegateError, ImportError):
            versions[_version_name(store)] = None
    return versions


def _version_name(store: str) -> str:
    return "alembic" if store == "postgres" else store


def _redis_version(settings: Settings) -> str | None:
    from releasegate.stores import redis as redis_store

    section = settings.raw.redis
    assert section is not None
    from releasegate.migrations.redis.versions import read_version

    client = redis_store.connect(
        settings.redis_url(), purpose="restore", timeout=section.connect_timeout
    )
    try:
        return read_version(client, section.version_key)
    finally:
        client.close()


def _qdrant_version(settings: Settings) -> str | None:
    from releasegate.migrations.qdrant import applied_version
    from releasegate.stores.qdrant import open_store

    with open_store(settings) as store:
        return str(applied_version(settings, store))


@contextlib.contextmanager
def _lock(settings: Settings, held: HeldLock | None, purpose: str) -> Iterator[HeldLock]:
    if held is not None:
        held.ensure_held()
        yield held
        return
    with service_lock(settings, purpose) as lock:
        yield lock


def _restore_stores(
    settings: Settings, manifest: Manifest, stores: Sequence[str] | None
) -> tuple[list[str], dict[str, str]]:
    """The stores to restore, and the stores of the set skipped (with why)."""
    available = configured_stores(settings)
    skipped: dict[str, str] = {}
    if stores:
        chosen = chosen_stores(manifest, stores)
        for name in chosen:
            if (why := available[name]) is not None:
                raise ConfigError(f"cannot restore {name}: {why}")
        return chosen, skipped
    chosen = []
    for name in manifest.store_names:
        if (why := available.get(name)) is None:
            chosen.append(name)
        else:
            skipped[name] = why
    if not chosen:
        raise ConfigError(
            f"nothing to restore from backup set {manifest.set_id}: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    return chosen, skipped


def _unconfirmed(set_id: str, yes: bool, live: str | None, while_live: bool) -> str | None:
    """Why a restore may not go ahead yet (the flags it lacks), or None."""
    if not yes:
        also = f"; {live} serves traffic: add --while-live too" if live and not while_live else ""
        return (
            f"restoring backup set {set_id} replaces the stores' contents, nothing changed:"
            f" review what it would lose and confirm with --yes{also}"
        )
    if live and not while_live:
        return (
            f"{live} serves traffic: restoring backup set {set_id} under a live color needs"
            " --while-live as well as --yes; nothing changed"
        )
    return None


def restore(
    settings: Settings,
    set_ref: str,
    *,
    stores: Sequence[str] | None = None,
    yes: bool = False,
    while_live: bool = False,
    held_lock: HeldLock | None = None,
    on_report: Callable[[LossReport], None] | None = None,
) -> RestoreResult:
    """Put a backup set back into the configured stores, under the release lock.

    1. Every file of the chosen stores is checked (size, SHA-256, inside the set folder,
       every file the restore reads listed): a damaged set raises :class:`CheckFailed`.
    2. The loss report (:mod:`releasegate.backup.loss`): what the restore would take away
       from each table, key pattern and collection, passed to ``on_report``.
    3. Nothing is touched unless ``yes``, and while a color serves traffic (the router's
       live color) unless ``while_live`` as well: else :class:`ConfigError` (exit 2). The
       live color and the report are taken again under the lock before the restore.
    4. All or nothing across the stores: each is staged first without changing what
       the service reads (Redis keys beside the live ones, copies of the Qdrant
       collections to replace, the Postgres restore in one open transaction: see each
       store's ``stage``), then committed (Qdrant, Redis, Postgres last). A failure
       anywhere aborts what is staged and undoes what was committed: every store is as
       it was (the error says so), or :class:`RollbackFailed` names what could not be
       put back. Then Postgres' rows per table are compared with the manifest.

    ``stores`` defaults to every store of the set that is configured here (the others are
    listed in ``result.skipped``). The ledger gets a release of kind ``restore`` with the
    loss report, an event per store and the versions before and after. A caller that
    already holds the release lock passes it as ``held_lock``.
    """
    started = time.monotonic()
    path, manifest = open_set(settings, set_ref)
    chosen, skipped = _restore_stores(settings, manifest, stores)
    damaged = check_files(path, manifest, chosen)
    if damaged:
        raise CheckFailed(_damage_message(manifest.set_id, damaged))
    entries = [e for e in manifest.stores if e.store in chosen]
    by_store = {e.store: e for e in entries}
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")

    def report_now(live: str | None, router: str) -> LossReport:
        report = loss_report(
            settings, path, manifest.set_id, entries, live_color=live, router=router
        )
        if on_report:
            on_report(report)
        return report

    live, router = traffic(settings)
    if (why := _unconfirmed(manifest.set_id, yes, live, while_live)) is not None:
        report_now(live, router)
        raise ConfigError(why)
    with (
        _lock(settings, held_lock, "backup restore") as lock,
        Ledger.open(url, "restore") as ledger,
    ):
        live, router = traffic(settings)  # again, under the lock
        if (why := _unconfirmed(manifest.set_id, yes, live, while_live)) is not None:
            raise ConfigError(why)
        report = report_now(live, router)
        before = live_versions(settings, chosen)
        release_id = ledger.start_release(
            settings.service,
            "restore",
            performer(),
            git_sha=git_sha(settings.root),
            **ledger_versions(before, "before"),
        )
        result = RestoreResult(
            manifest.set_id, path, release_id, report, skipped=skipped, while_live=while_live
        )
        result.versions_before = before
        summary = {"set_id": manifest.set_id, "stores": chosen, "skipped": skipped}
        ledger.record_event(
            release_id, "lock", StepStatus.OK, lock.waited, {**summary, "loss": report.to_dict()}
        )
        step = "lock"
        staged: dict[str, StagedRestore] = {}
        committed: list[str] = []
        outcomes: dict[str, dict[str, Any]] = {}
        try:
            for store in (s for s in STAGE_ORDER if s in chosen):
                step = f"stage {store}"
                lock.ensure_held()
                step_started = time.monotonic()
                staged[store] = store_module(store).stage(
                    settings, path, by_store[store], force=True
                )
                result.timings[store] = time.monotonic() - step_started
            for store in (s for s in COMMIT_ORDER if s in staged):
                step = f"restore {store}"
                lock.ensure_held()
                step_started = time.monotonic()
                outcomes[store] = staged[store].commit()
                committed.append(store)
                took = time.monotonic() - step_started
                result.timings[store] = round(result.timings[store] + took, 3)
                ledger.record_event(release_id, step, StepStatus.OK, took, outcomes[store])
        except BaseException as exc:
            failure = unwind(staged, committed, exc)
            error = str(failure) if isinstance(failure, ReleasegateError) else repr(failure)
            with contextlib.suppress(Exception):
                ledger.record_event(release_id, step, StepStatus.FAILED, None, {"error": error})
                after = live_versions(settings, chosen)
                ledger.finish_release(
                    release_id,
                    Outcome.FAILED,
                    {"set_id": manifest.set_id, "error": error},
                    **ledger_versions(after, "after"),
                )
            if failure is exc:
                raise
            raise failure from None
        try:  # the restore stands: drop what was kept for an undo, then check it
            step = "check"
            for store in chosen:
                staged[store].finish()
                result.stores[store] = outcomes[store]
            if "postgres" in by_store:
                _check_postgres(by_store["postgres"], outcomes["postgres"])
        except ReleasegateError as exc:
            with contextlib.suppress(Exception):
                ledger.record_event(release_id, step, StepStatus.FAILED, None, {"error": str(exc)})
                ledger.finish_release(
                    release_id, Outcome.FAILED, {"set_id": manifest.set_id, "error": str(exc)}
                )
            raise
        result.versions_after = live_versions(settings, chosen)
        result.seconds = time.monotonic() - started
        ledger.finish_release(
            release_id,
            Outcome.SUCCEEDED,
            {**summary, "while_live": while_live},
            **ledger_versions(result.versions_after, "after"),
        )
    return result


# Postgres is staged last (its open transaction holds locks) and committed last (a
# committed transaction cannot be undone; Redis and Qdrant can put their keys back).
STAGE_ORDER = ("redis", "qdrant", "postgres")
COMMIT_ORDER = ("qdrant", "redis", "postgres")


def unwind(
    staged: dict[str, StagedRestore], committed: list[str], exc: BaseException
) -> BaseException:
    """After a failure: abort what is only staged, undo what was committed (newest first);
    the error to raise, saying that nothing changed or what could not be put back."""
    for store, item in staged.items():
        if store not in committed:
            with contextlib.suppress(Exception):
                item.abort()
    failed: list[str] = []
    for store in reversed(committed):
        try:
            staged[store].undo()
        except ReleasegateError as undo_error:
            failed.append(str(undo_error))
    if failed:
        return RollbackFailed(f"{exc}; then {'; '.join(failed)}")
    if isinstance(exc, ReleasegateError):
        return type(exc)(f"{exc}; no store was changed")
    return exc


def _check_postgres(entry: StoreBackup, outcome: dict[str, Any]) -> None:
    from releasegate.backup import postgres

    found = postgres.compare(entry, outcome.get("tables", {}), None, outcome.get("alembic_after"))
    if found:
        first = found[0]
        raise CheckFailed(
            f"the restored Postgres differs from the backup: {first.describe()}"
            + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
        )
