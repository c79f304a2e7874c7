"""Undoing a release, and proving that everything is back as it was.

Changes are undone in reverse order: traffic back to the previous color, the new color
stopped, the Qdrant alias back, Redis migrations down, Alembic down to the recorded
revision. Where a step cannot be undone (an irreversible revision, a failed down
migration) the store is restored from the release's own backup set. Then every store
is compared with the pre-release manifest: versions and counts must be equal; a store
that still differs is restored from the backup and checked again. Whatever remains
unequal makes the rollback fail, and the exact manual steps are listed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from releasegate import db
from releasegate.config import Settings
from releasegate.lock import HeldLock

Progress = Callable[[str], None]


@dataclass
class UndoReport:
    reason: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    manual_steps: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.verified and all(s["status"] != "failed" for s in self.steps if s["required"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "ok": self.ok,
            "steps": self.steps,
            "restored_from_backup": self.restored,
            "verification": {"ok": self.verified, "checks": self.checks},
            "manual_steps": self.manual_steps,
        }


def _step(
    report: UndoReport,
    name: str,
    action: Callable[[], Any],
    progress: Progress,
    *,
    required: bool = True,
) -> bool:
    started = time.monotonic()
    progress(f"rollback: {name}")
    try:
        detail = action()
        status, error = "ok", None
    except Exception as exc:
        status, error, detail = "failed", f"{type(exc).__name__}: {db.first_line(exc)}", None
    report.steps.append(
        {
            "name": name,
            "status": status,
            "required": required,
            "duration_s": round(time.monotonic() - started, 3),
            "error": error,
            "detail": detail if isinstance(detail, dict) else {},
        }
    )
    return status == "ok"


def _restore(settings: Settings, set_id: str | None, store: str, lock: HeldLock) -> dict[str, Any]:
    from releasegate.backup import sets

    if set_id is None:
        raise RuntimeError(f"no backup set to restore {store} from")
    return sets.restore(settings, set_id, stores=[store], force=True, held_lock=lock).to_dict()


def _switch_back(settings: Settings, color: str) -> dict[str, Any]:
    from releasegate.errors import InfraError
    from releasegate.router import manager as router

    try:
        router.router_status(settings)
        started = False
    except InfraError:
        # The router answered at preflight: it stopped (or died) during the release.
        # Start it again (its saved state, else blue live) and then switch, so that
        # the traffic is verified on the previous color rather than left to a human.
        started = router.router_up(settings).started
    result: dict[str, Any] = router.rollback(settings, color).to_dict()
    result["router_restarted"] = started
    return result


def _stop(settings: Settings, color: str) -> dict[str, Any]:
    from releasegate.deploy import containers

    return {"removed": containers.stop(settings, color, force=True)}


def _down(settings: Settings, store: str, version: str) -> dict[str, Any]:
    from releasegate.migrations import stores

    result: dict[str, Any] = stores.down(settings, store, version).to_dict()
    return result


def undo_changes(
    settings: Settings,
    changes: list[dict[str, Any]],
    *,
    reason: str,
    backup_set: str | None,
    lock: HeldLock,
    progress: Progress,
) -> UndoReport:
    """Reverse ``changes`` (the release's undo log), newest first; see the module docs."""
    report = UndoReport(reason)
    for change in reversed(changes):
        kind = change["kind"]
        if kind == "switch":
            previous = change["from"]
            _step(
                report,
                f"traffic back to {previous}",
                partial(_switch_back, settings, previous),
                progress,
            )
        elif kind == "deploy":
            color = change["color"]
            _step(
                report,
                f"stop {color}",
                partial(_stop, settings, color),
                progress,
            )
        elif kind in ("qdrant", "redis", "postgres"):
            before = change["before"]
            ok = _step(
                report,
                f"{kind} down to {before}",
                partial(_down, settings, kind, before),
                progress,
                required=False,
            )
            if not ok and _step(
                report,
                f"restore {kind} from backup {backup_set}",
                partial(_restore, settings, backup_set, kind, lock),
                progress,
            ):
                report.restored.append(kind)
    return report


def live_snapshot(settings: Settings, manifest: dict[str, Any]) -> dict[str, Any]:
    """The live versions and counts of the stores a manifest covers."""
    from releasegate.backup import sets

    names = [entry["store"] for entry in manifest.get("stores", [])]
    versions = sets.live_versions(settings, names)
    counts = {name: sets.store_module(name).counts(settings) for name in names}
    return {"versions": versions, "counts": counts}


def _count_checks(store: str, expected: dict[str, Any], actual: dict[str, Any]) -> list[Any]:
    """(item, expected, actual) triples worth comparing for one store."""
    if store == "postgres":
        tables = sorted(set(expected.get("tables", {})) | set(actual.get("tables", {})))
        return [
            (f"rows {t}", expected.get("tables", {}).get(t), actual.get("tables", {}).get(t))
            for t in tables
        ]
    if store == "redis":
        # Expected values here are (at least, at most) ranges: see redis_counts_now.
        types = sorted(set(expected.get("types", {})) | set(actual.get("types", {})))
        return [("keys (not expired)", expected.get("keys"), actual.get("keys"))] + [
            (
                f"{t} keys",
                expected.get("types", {}).get(t, (0, 0)),
                actual.get("types", {}).get(t, 0),
            )
            for t in types
        ]
    points = {name: data.get("points") for name, data in expected.get("collections", {}).items()}
    live = {name: data.get("points") for name, data in actual.get("collections", {}).items()}
    return [
        ("points per collection", points, live),
        ("aliases", expected.get("aliases"), actual.get("aliases")),
    ]


def verify_against_manifest(
    settings: Settings, manifest: dict[str, Any], set_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Compare every store with the manifest (and its set's files): versions, then counts."""
    live = live_snapshot(settings, manifest)
    checks: list[dict[str, Any]] = []
    versions = manifest.get("versions", {})
    for store, version in versions.items():
        name = "postgres" if store == "alembic" else store
        if name not in live["versions"] and store not in live["versions"]:
            continue
        actual = live["versions"].get(store, live["versions"].get(name))
        checks.append(_check(name, f"{name} version", version, actual))
    for entry in manifest.get("stores", []):
        store = entry["store"]
        expected = entry.get("counts", {})
        if store == "redis" and set_dir is not None:
            expected = redis_counts_now(set_dir, entry)
        for item, want, have in _count_checks(store, expected, live["counts"][store]):
            checks.append(_check(store, item, want, have))
    return checks


def redis_counts_now(set_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The backup's Redis counts less the keys whose TTL has run out since.

    Keys expire on their own between the backup and the check; a restore skips them
    too, so the state to match is the backup as it would look now.
    """
    from releasegate.backup.base import StoreBackup
    from releasegate.backup.redis import DumpReader, dump_path

    # Redis reclaims expired keys lazily and by sampling, and the clocks differ a little:
    # a key within this margin of its expiry may or may not still be counted.
    now_ms = int(time.time() * 1000)
    margin_ms = EXPIRY_MARGIN_S * 1000
    keys = [0, 0]
    types: dict[str, list[int]] = {}
    for record in DumpReader(dump_path(set_dir, StoreBackup.from_dict(entry))).records():
        expiry = record.expire_at_ms
        if expiry and expiry <= now_ms - margin_ms:
            continue
        surely_there = not expiry or expiry > now_ms + margin_ms
        bounds = types.setdefault(record.type_name, [0, 0])
        for counter in (keys, bounds):
            counter[1] += 1
            counter[0] += int(surely_there)
    return {"keys": tuple(keys), "types": {name: tuple(b) for name, b in types.items()}}


EXPIRY_MARGIN_S = 5


def _within(expected: Any, actual: Any) -> bool:
    if isinstance(expected, tuple) and len(expected) == 2 and isinstance(actual, int):
        return bool(expected[0] <= actual <= expected[1])
    return bool(expected == actual)


def _check(store: str, item: str, expected: Any, actual: Any) -> dict[str, Any]:
    shown = expected
    if isinstance(expected, tuple):
        low, high = expected
        shown = low if low == high else f"{low}..{high}"
    return {
        "store": store,
        "item": item,
        "expected": shown,
        "actual": actual,
        "ok": _within(expected, actual),
    }


def verify_and_repair(
    settings: Settings,
    report: UndoReport,
    manifest: dict[str, Any] | None,
    backup_set: str | None,
    lock: HeldLock,
    progress: Progress,
) -> None:
    """Verify against the manifest; restore stores that differ from the backup; re-verify."""
    if manifest is None:
        report.checks = [_check("-", "pre-release manifest", "present", "none (no backup)")]
        return
    progress("rollback: verify against the pre-release manifest")
    set_dir = _set_dir(settings, backup_set)
    checks = verify_against_manifest(settings, manifest, set_dir)
    differing = sorted({c["store"] for c in checks if not c["ok"]} - set(report.restored))
    for store in differing:
        # Writes made during the release (e.g. the gate's own load) are not part of the
        # state the release started from: the backup is.
        if _step(
            report,
            f"restore {store} from backup {backup_set} (counts differed)",
            partial(_restore, settings, backup_set, store, lock),
            progress,
        ):
            report.restored.append(store)
    if differing:
        checks = verify_against_manifest(settings, manifest, set_dir)
    report.checks = checks
    if not report.ok:
        report.manual_steps = manual_steps(settings, report, backup_set)


def _set_dir(settings: Settings, backup_set: str | None) -> Path | None:
    if backup_set is None:
        return None
    from releasegate.backup.sets import resolve_set

    return resolve_set(settings, backup_set)


def manual_steps(settings: Settings, report: UndoReport, backup_set: str | None) -> list[str]:
    """What a human runs to finish a rollback that could not finish itself."""
    steps = [
        "releasegate router status   # check which color serves",
        "releasegate router rollback # if the new color still gets traffic",
        "releasegate ps",
    ]
    failed = {c["store"] for c in report.checks if not c["ok"]}
    failed |= {s["name"].split()[0] for s in report.steps if s["status"] == "failed"}
    for store in ("postgres", "redis", "qdrant"):
        if store in failed and backup_set:
            steps.append(f"releasegate backup restore {backup_set} --store {store} --yes")
    steps.append("releasegate status    # versions and counts must match the backup manifest")
    if backup_set:
        steps.append(f"releasegate backup verify {backup_set}")
    return steps
