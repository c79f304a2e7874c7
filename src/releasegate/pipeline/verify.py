"""Proving a rollback: versions as expected, and nothing that existed before was lost.

Counts verify nothing while users keep writing, so a rollback is checked against the
release's own backup set by content (:mod:`releasegate.backup.content`):

- each store's version equals the version the undo aimed at (the pre-release one, or the
  Postgres revision the rollback keeps on purpose: an irreversible revision, or the
  expanded schema after promotion), and Qdrant's aliases are back;
- **every row, key and point that existed before the release is still there,
  unchanged.** Rows are matched by primary key against fingerprints taken in the backup's
  own snapshot; when the release ran an irreversible data revision (kept by the
  rollback), a row may also match its form right after the migrate step;
- rows, keys and points written during the release are expected and allowed (``added``).

Two kinds of scope are relaxed by configuration, for what the live version itself does:
``redis.volatile_patterns`` (caches it deletes freely) are not checked at all, and
``release.live_updates`` names scopes whose items the live version updates in place
(``"redis:sess:*"``, ``"postgres:public.users"``): there a changed item is reported, not
failed. A missing item always fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from releasegate import db
from releasegate.config import Settings
from releasegate.pipeline.context import POSTGRES
from releasegate.pipeline.undo import UndoReport, manual_steps

Progress = Callable[[str], None]


def check(
    store: str, item: str, expected: Any, actual: Any, ok: bool | None = None
) -> dict[str, Any]:
    """One line of the verification table."""
    return {
        "store": store,
        "item": item,
        "expected": expected,
        "actual": actual,
        "ok": bool(expected == actual) if ok is None else ok,
    }


def _version_checks(
    settings: Settings, report: UndoReport, manifest: dict[str, Any]
) -> list[dict[str, Any]]:
    from releasegate.backup import set_restore

    recorded = manifest.get("versions", {})
    names = [entry["store"] for entry in manifest.get("stores", [])]
    live = set_restore.live_versions(settings, names)
    checks = []
    for store in names:
        key = "alembic" if store == POSTGRES else store
        expected = report.expected_versions.get(store, recorded.get(key))
        checks.append(check(store, f"{store} version", _version(expected), _version(live.get(key))))
    return checks


def _version(value: str | None) -> str:
    """One spelling of "never migrated" for every store."""
    return "base" if value in (None, "", "0000", "base") else str(value)


def _alias_checks(settings: Settings, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    from releasegate.backup import qdrant

    entry = next((e for e in manifest.get("stores", []) if e["store"] == "qdrant"), None)
    if entry is None:
        return []
    expected = entry.get("counts", {}).get("aliases")
    actual = qdrant.counts(settings).get("aliases")
    return [check("qdrant", "aliases", expected, actual)]


def _scope_key(store: str, scope: str) -> str:
    return f"{store}:{scope}"


def content_checks(
    settings: Settings,
    set_dir: Path,
    manifest: dict[str, Any],
    *,
    accept: Path | None = None,
) -> list[dict[str, Any]]:
    """Per table, keyspace and collection: pre-release items kept and unchanged."""
    from releasegate.backup import content
    from releasegate.backup.base import StoreBackup

    live_updates = set(settings.raw.release.live_updates)
    checks: list[dict[str, Any]] = []
    for raw_entry in manifest.get("stores", []):
        entry = StoreBackup.from_dict(raw_entry)
        store = entry.store
        if store == POSTGRES:
            diff = content.compare_postgres(settings, set_dir, entry, also_accept=accept)
        elif store == "redis":
            diff = content.compare_redis(settings, set_dir, entry)
        else:
            diff = content.compare_qdrant(settings, set_dir, entry)
        for scope in diff.scopes:
            relaxed = _scope_key(store, scope.scope) in live_updates
            ok = scope.note is None and scope.missing == 0 and (scope.changed == 0 or relaxed)
            actual = (
                f"{scope.kept_unchanged} kept, {scope.changed} changed"
                + (" (live updates)" if relaxed and scope.changed else "")
                + f", {scope.missing} missing, {scope.added} added"
                + (f", {scope.accepted} as the kept migration left them" if scope.accepted else "")
                + (f" ({scope.note})" if scope.note else "")
            )
            item = check(
                store, f"content {scope.scope}", "every pre-release item kept", actual, ok=ok
            )
            if not ok:
                item["examples"] = scope.examples
            checks.append(item)
    return checks


def verify_rollback(
    settings: Settings,
    report: UndoReport,
    changes: list[dict[str, Any]],
    manifest: dict[str, Any] | None,
    backup_set: str | None,
    progress: Progress,
) -> None:
    """Fill ``report.checks`` (and the manual steps when anything is off)."""
    if manifest is None or backup_set is None:
        report.checks = [check("-", "pre-release backup", "present", "none (no backup)")]
        report.manual_steps = manual_steps(report, backup_set)
        return
    from releasegate.backup.sets import resolve_set

    progress("rollback: verify versions and content against the pre-release backup")
    checks: list[dict[str, Any]] = []
    try:
        checks += _version_checks(settings, report, manifest)
        checks += _alias_checks(settings, manifest)
        accept = next(
            (Path(c["accept"]) for c in changes if c["kind"] == POSTGRES and c.get("accept")),
            None,
        )
        checks += content_checks(
            settings, resolve_set(settings, backup_set), manifest, accept=accept
        )
    except Exception as exc:  # a store that cannot be read cannot be verified
        checks.append(check("-", "verification", "completed", db.first_line(exc), ok=False))
    report.checks = checks
    if not report.ok:
        report.manual_steps = manual_steps(report, backup_set)
