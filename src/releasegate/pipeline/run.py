"""``releasegate release``, ``release --resume`` and ``releasegate rollback``.

A release is a list of small steps (:data:`releasegate.pipeline.steps.STEPS`) run in
order under the release lock. Each step's status and duration go to the ledger as it
ends. The first failure after a change starts the automatic rollback
(:mod:`releasegate.pipeline.undo`); its verification decides between "rolled back"
(exit 1) and "rollback failed" (exit 4, with the manual steps). A canary ``pause``
ends the run as "paused" (exit 5) until ``release --resume``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from releasegate import db
from releasegate.config import Settings
from releasegate.errors import (
    ConfigError,
    ExitCode,
    InfraError,
    ReleasegateError,
    StateError,
)
from releasegate.hosts.transport import transport
from releasegate.ledger import Ledger, Outcome, StepStatus
from releasegate.lock import HeldLock, service_lock, shared
from releasegate.pipeline import steps as pipeline_steps
from releasegate.pipeline.canary import Step, with_canary
from releasegate.pipeline.context import (
    SWITCH,
    ReleaseContext,
    ReleaseOptions,
    ReleaseResult,
    StepOutcome,
    StepRecord,
)
from releasegate.pipeline.undo import UndoReport, undo_changes
from releasegate.pipeline.verify import verify_rollback
from releasegate.runinfo import git_sha, performer


class StepListener(Protocol):
    """Who watches the steps: the live terminal list, plain lines, or nobody."""

    def start(self, name: str) -> None: ...

    def finish(self, name: str, status: str, summary: str) -> None: ...

    def update(self, name: str, text: str) -> None: ...


class _Quiet:
    def start(self, name: str) -> None:
        pass

    def finish(self, name: str, status: str, summary: str) -> None:
        pass

    def update(self, name: str, text: str) -> None:
        pass


# Steps that change nothing: a failure there needs no rollback.
_BEFORE_CHANGES = {"preflight", "plan"}


def release_steps(settings: Settings) -> list[tuple[str, Step]]:
    """The pipeline's steps, with the canary's before the promotion when configured."""
    return with_canary(settings, pipeline_steps.STEPS)


def _run_step(
    ctx: ReleaseContext,
    name: str,
    step: Callable[[ReleaseContext], StepOutcome],
    listener: StepListener,
) -> StepRecord:
    listener.start(name)
    started = time.monotonic()
    try:
        ctx.lock.ensure_held()
        outcome = step(ctx)
    except ReleasegateError as exc:
        detail: dict[str, Any] = {"error_type": type(exc).__name__}
        if exc.exit_code in (ExitCode.USAGE, ExitCode.INFRA):
            # When nothing changed: bad input exits 2; a store or backup destination that
            # cannot be reached (or is full) exits 3, as the same failure outside a release.
            detail["exit_code"] = int(exc.exit_code)
        outcome = StepOutcome(False, db.first_line(exc), detail)
    except Exception as exc:  # a bug or an unexpected library error: still roll back
        outcome = StepOutcome(
            False, f"{type(exc).__name__}: {db.first_line(exc)}", {"unexpected": True}
        )
    status = "skipped" if outcome.skipped else ("ok" if outcome.ok else "failed")
    if outcome.ok and outcome.paused:
        status = "paused"
    record = StepRecord(name, status, time.monotonic() - started, outcome.summary, outcome.detail)
    ctx.steps.append(record)
    ctx.ledger.record_event(
        ctx.release_id,
        name,
        StepStatus(status),
        record.duration_s,
        {"summary": outcome.summary},
    )
    ctx.ledger.merge_summary(ctx.release_id, {"steps": [s.to_dict() for s in ctx.steps]})
    listener.finish(name, status, outcome.summary)
    return record


@contextmanager
def _release_session(
    settings: Settings, image: str | None, kind: str
) -> Iterator[tuple[Ledger, HeldLock, int]]:
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    with (
        service_lock(settings, kind) as held,
        shared(held),
        Ledger.open(url, kind) as ledger,
    ):
        release_id = ledger.start_release(
            settings.service, kind, performer(), git_sha=git_sha(settings.root), image_ref=image
        )
        ledger.record_event(release_id, "lock", StepStatus.OK, held.waited)
        yield ledger, held, release_id


def _result(ctx: ReleaseContext, outcome: str, exit_code: int, error: str | None) -> ReleaseResult:
    return ReleaseResult(
        release_id=ctx.release_id,
        service=ctx.settings.service,
        outcome=outcome,
        exit_code=exit_code,
        image={
            "ref": ctx.options.image,
            "digest": ctx.image_digest,
            "previous": ctx.previous_image,
        },
        performer=ctx.performer,
        git_sha=ctx.git_sha,
        started_at=ctx.started_at.isoformat(),
        finished_at=datetime.now(UTC).isoformat(),
        duration_s=time.monotonic() - ctx.started,
        colors={
            "live_before": ctx.live_before,
            "target": ctx.target,
            "live_after": ctx.target if outcome == "succeeded" else ctx.live_before,
        },
        steps=[s.to_dict() for s in ctx.steps],
        sections=ctx.sections,
        error=error,
        first_release=ctx.first_release,
    )


def _roll_back(ctx: ReleaseContext, reason: str, listener: StepListener) -> UndoReport:
    listener.start("rollback")
    started = time.monotonic()
    report = undo_changes(ctx.settings, ctx.changes, reason=reason, progress=ctx.progress)
    verify_rollback(ctx.settings, report, ctx.changes, ctx.manifest, ctx.backup_set, ctx.progress)
    status = "ok" if report.ok else "failed"
    checks = report.checks
    summary = f"verified: {sum(c['ok'] for c in checks)}/{len(checks)} checks passed" + (
        f"; kept {len(report.kept)} change(s) on purpose" if report.kept else ""
    )
    ctx.steps.append(StepRecord("rollback", status, time.monotonic() - started, summary))
    ctx.sections["rollback"] = report.to_dict()
    ctx.ledger.record_event(
        ctx.release_id,
        "rollback",
        StepStatus(status),
        time.monotonic() - started,
        {"summary": summary, "kept": report.kept, "promoted": report.promoted, "ok": report.ok},
    )
    if report.kept:
        ctx.ledger.merge_summary(ctx.release_id, {"kept_after_rollback": report.kept})
    listener.finish("rollback", status, summary)
    return report


def _finish(
    ctx: ReleaseContext, failure: StepRecord | None, listener: StepListener
) -> ReleaseResult:
    """Decide the outcome; roll back when a step after the first change failed."""
    if failure is None:
        outcome, code, error = Outcome.SUCCEEDED, ExitCode.OK, None
    elif failure.name in _BEFORE_CHANGES or not ctx.changes:
        # Nothing in the undo log (e.g. the backup itself failed, or a crash before the
        # first change): there is nothing to roll back and no manifest to verify against.
        outcome = Outcome.FAILED
        code = ExitCode(failure.detail.get("exit_code", ExitCode.CHECK_FAILED))
        error = f"{failure.name}: {failure.summary} (nothing was changed)"
    elif failure.name == pipeline_steps.POINT_OF_NO_RETURN:
        # The old version is gone: finish by hand, with the backup at hand.
        outcome, code = Outcome.FAILED, ExitCode.ROLLBACK_FAILED
        error = f"{failure.name}: {failure.summary}"
    else:
        report = _roll_back(ctx, f"{failure.name}: {failure.summary}", listener)
        error = f"{failure.name}: {failure.summary}"
        if report.ok:
            outcome, code = Outcome.ROLLED_BACK, ExitCode.CHECK_FAILED
        else:
            outcome, code = Outcome.ROLLBACK_FAILED, ExitCode.ROLLBACK_FAILED
    host = transport(ctx.settings)
    if error is not None and host.connection_drops():
        # Why a step saw the host vanish, though the host itself is fine.
        error += (
            f" (the connection to {host.describe()} dropped during the release"
            f" and was made again: {host.connection_drops()}x)"
        )
    ctx.ledger.finish_release(
        ctx.release_id,
        outcome,
        {"error": error, "steps": [s.to_dict() for s in ctx.steps]},
        image_digest=ctx.image_digest,
    )
    return _result(ctx, str(outcome), int(code), error)


def release(
    settings: Settings,
    options: ReleaseOptions,
    *,
    listener: StepListener | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReleaseResult:
    """Run the whole release pipeline; see the module docs and README."""
    listener = listener or _Quiet()
    if options.dry_run:
        return dry_run(settings, options, listener)
    with _release_session(settings, options.image, "release") as (ledger, held, release_id):
        ctx = ReleaseContext(
            settings,
            options,
            ledger,
            release_id,
            held,
            performer(),
            git_sha(settings.root),
            progress=progress or (lambda _m: None),
        )
        return _run_from(ctx, 0, listener)


def _run_from(ctx: ReleaseContext, first: int, listener: StepListener) -> ReleaseResult:
    failure = None
    ctx.step_progress = listener.update
    try:
        for name, step in release_steps(ctx.settings)[first:]:
            record = _run_step(ctx, name, step, listener)
            if record.status == "failed":
                failure = record
                break
            if record.status == "paused":
                return _pause(ctx, record)
    except BaseException as exc:
        if ctx.ledger.conn.closed:
            # The ledger's session is gone, and the lock's with it when both go through
            # the same connection: undoing now could race a runner that took the lock
            # since. Stop; --resume takes the lock again and ends the release.
            raise InfraError(_sessions_lost(ctx, exc)) from None
        # Interrupted (Ctrl-C, SIGTERM): undo what was done, then let the interrupt through.
        record = StepRecord("interrupted", "failed", 0.0, type(exc).__name__)
        ctx.steps.append(record)
        _finish(ctx, record, listener)
        raise
    return _finish(ctx, failure, listener)


def _sessions_lost(ctx: ReleaseContext, exc: BaseException) -> str:
    host = transport(ctx.settings)
    why = (
        f"the connection to {host.describe()} dropped"
        if host.connection_drops()
        else db.first_line(exc)
    )
    return (
        f"release {ctx.release_id} stopped: its ledger session was lost ({why});"
        " `releasegate release --resume` rolls it back or finishes it"
    )


def _pause(ctx: ReleaseContext, record: StepRecord) -> ReleaseResult:
    """Close the row as ``paused``: the lock is let go, the canary's weight stays."""
    ctx.ledger.finish_release(
        ctx.release_id,
        Outcome.PAUSED,
        {"paused_at": record.name, "steps": [s.to_dict() for s in ctx.steps]},
        image_digest=ctx.image_digest,
    )
    return _result(ctx, str(Outcome.PAUSED), int(ExitCode.PAUSED), None)


def dry_run(settings: Settings, options: ReleaseOptions, listener: StepListener) -> ReleaseResult:
    """Preflight and plan only, on a ledger row of kind ``dry-run``: nothing is changed."""
    with _release_session(settings, options.image, "dry-run") as (ledger, held, release_id):
        ctx = ReleaseContext(
            settings, options, ledger, release_id, held, performer(), git_sha(settings.root)
        )
        failure = None
        for name, step in pipeline_steps.STEPS[:2]:
            record = _run_step(ctx, name, step, listener)
            if record.status == "failed":
                failure = record
                break
        # The same word in the ledger, the result and the workflow's outputs.
        outcome = Outcome.BLOCKED if failure else Outcome.DRY_RUN
        error = f"{failure.name}: {failure.summary}" if failure else None
        ledger.finish_release(release_id, outcome, {"dry_run": True, "error": error})
        code = ExitCode.OK
        if failure is not None:
            code = ExitCode(failure.detail.get("exit_code", ExitCode.CHECK_FAILED))
        return _result(ctx, str(outcome), int(code), error)


# -- resume and manual rollback -------------------------------------------------------------


def _interrupted_release(ledger: Ledger, service: str) -> Any:
    """The newest release that did not end: interrupted (``running``) or ``paused``."""
    row = ledger.conn.execute(
        "SELECT id FROM releasegate.releases WHERE service = %s AND kind = 'release'"
        " AND outcome IN ('running', 'paused') ORDER BY id DESC LIMIT 1",
        (service,),
    ).fetchone()
    return ledger.release(int(row[0])) if row else None


def _context_from(
    settings: Settings, ledger: Ledger, held: HeldLock, release: Any, options: ReleaseOptions
) -> ReleaseContext:
    summary = release.summary or {}
    ctx = ReleaseContext(
        settings, options, ledger, release.id, held, release.performer, release.git_sha
    )
    ctx.changes = list(summary.get("changes", []))
    ctx.first_release = bool(summary.get("first_release"))
    ctx.steps = [StepRecord(**s) for s in summary.get("steps", [])]
    ctx.image_digest = release.image_digest
    backup = next((c for c in ctx.changes if c["kind"] == "backup"), None)
    if backup is not None:
        from releasegate.backup.sets import open_set

        ctx.backup_set = backup["set_id"]
        _path, manifest = open_set(settings, backup["set_id"])
        ctx.manifest = manifest.to_dict()
    switch = next((c for c in ctx.changes if c["kind"] == SWITCH), None)
    deploy = next((c for c in ctx.changes if c["kind"] == "deploy"), None)
    if deploy is not None:
        ctx.target = deploy["color"]
        ctx.previous_image = deploy.get("previous_image")
        from releasegate.router.state import other_color

        if switch is not None:
            ctx.live_before = switch["from"]
        elif not ctx.first_release:
            ctx.live_before = other_color(deploy["color"])
    return ctx


def resume(
    settings: Settings, *, listener: StepListener | None = None, force: bool = False
) -> ReleaseResult:
    """Bring an interrupted release (outcome still ``running``) to a consistent end, or
    continue a ``paused`` one with the step after its pause.

    The ledger's undo log says how far an interrupted release got. Before the promotion
    it is rolled back; after a completed promotion the remaining steps (watch, finalize)
    run again.
    """
    listener = listener or _Quiet()
    url = settings.postgres_url()
    with Ledger.open(url, "resume") as probe:
        interrupted = _interrupted_release(probe, settings.service)
    if interrupted is None:
        raise StateError(
            f"no interrupted release of service '{settings.service}' to resume, nor a paused one"
        )
    with (
        service_lock(settings, "release --resume") as held,
        shared(held),
        Ledger.open(url, "resume") as ledger,
    ):
        options = ReleaseOptions(image=interrupted.image_ref or "", force=force)
        ctx = _context_from(settings, ledger, held, interrupted, options)
        held.ledger_row = ctx.release_id  # the runs it starts are this release's children
        ledger.record_event(ctx.release_id, "resume", StepStatus.INFO, None, {"by": performer()})
        done = {s.name for s in ctx.steps if s.status in ("ok", "skipped")}
        names = [name for name, _ in release_steps(settings)]
        # Sections the remaining steps read, rebuilt from the ledger.
        summary = interrupted.summary or {}
        plan = summary.get("plan") or {}
        ctx.sections["plan"] = {
            "contract": list(plan.get("contract", [])),
            "expand": list(plan.get("expand", [])),
        }
        if summary.get("canary"):
            ctx.sections["canary"] = summary["canary"]
        if interrupted.outcome == Outcome.PAUSED:
            first = _after_pause(names, summary.get("paused_at"))  # before the row changes
            ledger.set_outcome(ctx.release_id, Outcome.RUNNING)
            return _run_from(ctx, first, listener)
        if "promote" in done:
            return _run_from(ctx, names.index("watch"), listener)
        record = StepRecord("resume", "failed", 0.0, "interrupted before promotion: rolling back")
        ctx.steps.append(record)
        return _finish(ctx, record, listener)


def _after_pause(names: list[str], paused_at: str | None) -> int:
    """Where a paused release continues: the step after its pause in today's step list."""
    if paused_at not in names:
        raise StateError(
            f"the release paused at '{paused_at}', which [release.canary] no longer lists:"
            " restore the steps it was released with, or undo it with 'releasegate rollback'"
        )
    return names.index(paused_at) + 1


def rollback(
    settings: Settings, release_id: int | None = None, *, listener: StepListener | None = None
) -> ReleaseResult:
    """Undo a finished release by hand (the last succeeded one, or ``release_id``)."""
    listener = listener or _Quiet()
    url = settings.postgres_url()
    with Ledger.open(url, "rollback") as probe:
        if release_id is None:
            # Only the newest release, and only while it is the one that serves: undoing
            # an older good release takes its id (a failed newer one already ended).
            row = probe.conn.execute(
                "SELECT id, outcome FROM releasegate.releases WHERE service = %s"
                " AND kind = 'release' ORDER BY id DESC LIMIT 1",
                (settings.service,),
            ).fetchone()
            if row is None:
                raise StateError(f"no release of service '{settings.service}' to roll back")
            if row[1] not in ("succeeded", "running", "paused"):
                raise StateError(
                    f"the last release {row[0]} of service '{settings.service}' ended"
                    f" {row[1]}: nothing of it serves; to undo an older release, name the"
                    " release to undo with --to"
                )
            release_id = int(row[0])
        target = probe.release(release_id)
    if target is None or target.kind != "release":
        raise ConfigError(f"no release with id {release_id} in the ledger")
    with _release_session(settings, target.image_ref, "rollback") as (ledger, held, own_id):
        ctx = _context_from(
            settings, ledger, held, target, ReleaseOptions(image=target.image_ref or "")
        )
        ctx.release_id = own_id
        ledger.merge_summary(own_id, {"rolls_back": target.id})
        _redeploy_previous(ctx)
        report = _roll_back(ctx, f"manual rollback of release {target.id}", listener)
        outcome = Outcome.ROLLED_BACK if report.ok else Outcome.ROLLBACK_FAILED
        ledger.finish_release(own_id, outcome, {"rolls_back": target.id})
        if report.ok:
            ledger.set_outcome(target.id, Outcome.ROLLED_BACK)
        code = ExitCode.OK if report.ok else ExitCode.ROLLBACK_FAILED
        result = _result(ctx, str(outcome), int(code), None if report.ok else "rollback failed")
        result.kind = "rollback"
        return result


def _redeploy_previous(ctx: ReleaseContext) -> None:
    """After finalize the old color is gone: run its image again (kept locally) first."""
    stopped = next((c for c in ctx.changes if c["kind"] == "stop_previous"), None)
    if stopped is None or not stopped.get("image"):
        return
    from releasegate.deploy import containers

    ctx.progress(f"rollback: redeploy {stopped['image']} as {stopped['color']}")
    containers.deploy(ctx.settings, stopped["color"], stopped["image"], force=True)
    ctx.changes = [c for c in ctx.changes if c["kind"] not in ("stop_previous", "contract")]
