"""Undoing a release: its own changes, each by its own down step. Never a restore.

Changes are undone newest first, from the release's undo log:

1. traffic back to the previous color (after a first release: to no color), whether the
   new color had all new requests (promoted) or a canary's share of them;
2. the new color stopped;
3. Qdrant and Redis expansions undone. Before any real request reached green the new
   layout holds only the release's copies and green's synthetic writes, so it is removed;
   once green served real users (promoted, or a canary step) what it wrote is carried
   back into the old layout first (the migrations' down transforms);
4. Postgres. Before promotion the release's reversible expand/data revisions are
   downgraded (green saw only synthetic traffic, so nothing of a user's lives in what they
   added); an irreversible revision and everything below it is kept, since blue is
   compatible with it by the compatibility rule. Once green served real users the
   expanded schema is kept: they may have written into it, and blue is compatible with it
   by construction.

No backup is ever restored here: a restore over a store that a live color uses loses every
write made since the backup. :mod:`releasegate.pipeline.verify` then proves the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from releasegate import db
from releasegate.config import Settings
from releasegate.pipeline.context import CANARY, DEPLOY, POSTGRES, QDRANT, REDIS, SWITCH

Progress = Callable[[str], None]


@dataclass
class UndoReport:
    reason: str
    # Real users reached the new color (a promotion or a canary step): what they wrote
    # is carried back, never removed.
    promoted: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # what the rollback keeps on purpose, and why
    expected_versions: dict[str, str | None] = field(default_factory=dict)
    manual_steps: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.verified and all(s["status"] != "failed" for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "ok": self.ok,
            "promoted": self.promoted,
            "steps": self.steps,
            "kept": self.kept,
            "expected_versions": self.expected_versions,
            "verification": {"ok": self.verified, "checks": self.checks},
            "manual_steps": self.manual_steps,
        }


def _step(report: UndoReport, name: str, action: Callable[[], Any], progress: Progress) -> bool:
    started = time.monotonic()
    progress(f"rollback: {name}")
    try:
        detail = action()
        status, error = "ok", None
    except Exception as exc:
        status, error, detail = "failed", f"{type(exc).__name__}: {db.first_line(exc)}", None
    if detail is not None and hasattr(detail, "to_dict"):
        detail = detail.to_dict()
    report.steps.append(
        {
            "name": name,
            "status": status,
            "duration_s": round(time.monotonic() - started, 3),
            "error": error,
            "detail": detail if isinstance(detail, dict) else {},
        }
    )
    return status == "ok"


def _switch_back(settings: Settings, color: str | None) -> dict[str, Any]:
    """Traffic back to ``color``; ``None`` (a first release) sends it to no color."""
    from releasegate.errors import InfraError
    from releasegate.router.manager import router_up
    from releasegate.router.state import router_status
    from releasegate.router.switching import rollback, withdraw

    try:
        router_status(settings)
        started = False
    except InfraError:
        # The router answered at preflight: it stopped (or died) during the release.
        # Start it again (its saved state, else blue live) and then switch, so that
        # the traffic is verified on the previous color rather than left to a human.
        started = router_up(settings).started
    switched = withdraw(settings) if color is None else rollback(settings, color)
    result: dict[str, Any] = switched.to_dict()
    result["router_restarted"] = started
    return result


def _stop(settings: Settings, color: str) -> dict[str, Any]:
    """Stop the release's color; what it logged last goes into the report first, since
    the container (and with it its log) is removed."""
    from releasegate.deploy import containers
    from releasegate.deploy.engine import connect

    found = containers.find_container(connect(settings), settings, color)
    logs = containers.log_tail(found) if found is not None else []
    return {"removed": containers.stop(settings, color, force=True), "log_tail": logs}


def _postgres_down(settings: Settings, target: str) -> dict[str, Any]:
    from releasegate.migrations import stores

    result: dict[str, Any] = stores.down(settings, POSTGRES, target).to_dict()
    return result


def _undo_expand(settings: Settings, store: str, promoted: bool) -> Any:
    from releasegate.migrations import stores

    return stores.undo_expand(settings, store, promoted=promoted)


def _undo_postgres(
    settings: Settings, change: dict[str, Any], report: UndoReport, progress: Progress
) -> None:
    before = change["before"]
    after = change.get("after")
    if report.promoted:
        # Green's users may have written into the new columns; blue runs on them.
        kept = after or "the migrated revision"
        report.kept.append(
            f"postgres schema kept at {kept} (expanded): the new version served users,"
            " who may have written into it; the previous version is compatible with it"
        )
        report.expected_versions[POSTGRES] = after
        return
    keep = _irreversible_applied(settings, change)
    target = keep or before
    if keep:
        report.kept.append(
            f"postgres kept at {keep}: irreversible revision {keep} (and those below it)"
            " ran before promotion; the previous version is compatible with it"
        )
    report.expected_versions[POSTGRES] = target
    if after == target:
        return
    _step(
        report,
        f"postgres down to {target}",
        partial(_postgres_down, settings, target),
        progress,
    )


def _irreversible_applied(settings: Settings, change: dict[str, Any]) -> str | None:
    """The newest irreversible revision of the release that is applied now, if any."""
    irreversible = change.get("irreversible") or []
    if not irreversible:
        return None
    from releasegate.backup import set_restore

    current = set_restore.live_versions(settings, [POSTGRES]).get("alembic")
    revisions: list[str] = list(change.get("revisions") or [])
    applied = revisions[: revisions.index(current) + 1] if current in revisions else []
    kept = [r for r in applied if r in irreversible]
    return kept[-1] if kept else None


def undo_changes(
    settings: Settings, changes: list[dict[str, Any]], *, reason: str, progress: Progress
) -> UndoReport:
    """Reverse ``changes`` (the release's undo log), newest first; see the module docs."""
    kinds = {c["kind"] for c in changes}
    report = UndoReport(reason, promoted=bool(kinds & {SWITCH, CANARY}))
    for change in reversed(changes):
        kind = change["kind"]
        if kind == CANARY and SWITCH in kinds:
            continue  # the promotion's own switch back already covers it
        if kind in (SWITCH, CANARY):
            previous = change["from"]
            _step(
                report,
                f"traffic back to {previous}"
                if previous
                else "traffic to no color (first release)",
                partial(_switch_back, settings, previous),
                progress,
            )
        elif kind == DEPLOY:
            color = change["color"]
            _step(report, f"stop {color}", partial(_stop, settings, color), progress)
        elif kind in (REDIS, QDRANT):
            report.expected_versions[kind] = change["before"]
            how = "carry the new version's writes back" if report.promoted else "remove"
            _step(
                report,
                f"{kind} expand undone ({how})",
                partial(_undo_expand, settings, kind, report.promoted),
                progress,
            )
        elif kind == POSTGRES:
            _undo_postgres(settings, change, report, progress)
    return report


def manual_steps(report: UndoReport, backup_set: str | None) -> list[str]:
    """What a human runs to finish a rollback that could not finish itself.

    None of these loses a write: the failed undo steps are run again, and a restore from
    the backup comes only as a last resort, after its loss report.
    """
    steps = [
        "releasegate router status   # check which color serves",
        "releasegate router rollback # if the new color still gets traffic",
        "releasegate ps",
    ]
    failed = {s["name"].split()[0] for s in report.steps if s["status"] == "failed"}
    failed |= {c["store"] for c in report.checks if not c["ok"]}
    for store in ("redis", "qdrant"):
        if store in failed and store in report.expected_versions:
            steps.append(
                f"releasegate migrate down --store {store} --to"
                f" {report.expected_versions[store] or 'base'}   # runs the down steps again"
            )
    if "postgres" in failed and report.expected_versions.get(POSTGRES):
        steps.append(
            f"releasegate migrate down --to {report.expected_versions[POSTGRES]}"
            "   # runs the down revisions again"
        )
    steps.append("releasegate status    # versions now")
    if backup_set and failed & {"postgres", "redis", "qdrant"}:
        stores = " ".join(f"--store {s}" for s in sorted(failed & {"postgres", "redis", "qdrant"}))
        steps.append(
            f"releasegate backup restore {backup_set} {stores}"
            "   # LAST RESORT: it first prints every row, key and point written since"
            " the backup that it would lose"
        )
    return steps
