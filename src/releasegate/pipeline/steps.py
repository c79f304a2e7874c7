"""The release steps, in order. Each takes the context and returns a :class:`StepOutcome`.

A step that changes something writes the change to the undo log *before* making it, so
that a rollback (or ``--resume`` after a crash) also undoes a change that was cut short.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from releasegate.config import format_duration
from releasegate.errors import ExitCode
from releasegate.pipeline import first_release
from releasegate.pipeline.context import (
    BACKUP,
    CONTRACT,
    DEPLOY,
    POSTGRES,
    QDRANT,
    REDIS,
    STOP_PREVIOUS,
    SWITCH,
    ReleaseContext,
    StepOutcome,
)

if TYPE_CHECKING:
    from releasegate.router.state import RouterState

Step = Callable[[ReleaseContext], StepOutcome]


def _color_url(ctx: ReleaseContext, color: str) -> str:
    from releasegate.deploy.containers import color_port
    from releasegate.hosts.transport import transport

    return transport(ctx.settings).color_url(color_port(ctx.settings, color))


# -- preflight and plan ---------------------------------------------------------------


def preflight(ctx: ReleaseContext) -> StepOutcome:
    """Every store, Docker and the router answer; the image exists; who is live.

    With no live color and no container of the service, the release is its first
    (:mod:`releasegate.pipeline.first_release`): a router that is down is started (not in
    a dry run) and blue is the target.
    """
    from releasegate.deploy import containers
    from releasegate.deploy.engine import connect as docker_connect
    from releasegate.migrations import stores
    from releasegate.router.config import COLORS
    from releasegate.router.state import other_color

    settings = ctx.settings
    checks: dict[str, str] = {"postgres": "ok (ledger open)", "lock": "held"}
    stores.status(settings, [s for s in stores.configured_stores(settings) if s != "postgres"])
    for store in stores.configured_stores(settings)[1:]:
        checks[store] = "ok"
    client = docker_connect(settings)
    image = containers.resolve_image(client, ctx.options.image, pull=not ctx.options.dry_run)
    ctx.image_digest = (image.attrs.get("RepoDigests") or [None])[0] or str(image.id)
    # The commit the image was built from, not the deploying checkout's.
    ctx.git_sha = (image.labels or {}).get(containers.REVISION_LABEL) or ctx.git_sha
    ctx.ledger.update_release(ctx.release_id, git_sha=ctx.git_sha)
    checks["docker"] = "ok"
    checks["image"] = ctx.image_digest
    found = {color: containers.find_container(client, settings, color) for color in COLORS}
    present = {color: str(c.status) for color, c in found.items() if c is not None}
    state, router_note = _router_state(ctx, present)
    checks["router"] = router_note
    live = state.live if state is not None else None
    verdict = first_release.judge(
        first_release.Standing(
            service=settings.service,
            live=live,
            live_healthy=live is not None and state is not None and state[live].healthy,
            containers=present,
            ports={color: containers.color_port(settings, color) for color in COLORS},
        )
    )
    if verdict.refusal is not None:
        # Containers in an unknown role: the infrastructure needs a human, not a retry.
        return StepOutcome(
            False, verdict.refusal, {"checks": checks, "exit_code": int(ExitCode.INFRA)}
        )
    if verdict.first_release:
        ctx.first_release = True
        ctx.target = first_release.FIRST_COLOR
        ctx.ledger.merge_summary(ctx.release_id, {"first_release": True})
    else:
        assert state is not None and live is not None
        if not state[live].healthy:
            return StepOutcome(
                False,
                f"the live color {live} fails HAProxy's health check"
                f" ({state[live].check}): nothing to fall back to",
                {"checks": checks},
            )
        ctx.live_before = live
        ctx.target = other_color(live)
        previous = found[live]
        if previous is not None:
            image_id = previous.image.id if previous.image is not None else None
            ctx.previous_image = (previous.labels or {}).get("releasegate.image") or image_id
    paused = ctx.ledger.conn.execute(
        "SELECT id FROM releasegate.releases WHERE service = %s AND kind = 'release'"
        " AND outcome = 'paused' ORDER BY id DESC LIMIT 1",
        (settings.service,),
    ).fetchone()
    if paused:
        # Its canary still holds the standby color and a share of the traffic.
        return StepOutcome(
            False,
            f"release {paused[0]} is paused mid-canary: continue it with 'releasegate release"
            " --resume' or undo it with 'releasegate rollback' first",
            {"checks": checks},
        )
    rolled_back = ctx.ledger.conn.execute(
        "SELECT id FROM releasegate.releases WHERE service = %s AND image_digest = %s"
        " AND outcome = 'rolled_back' ORDER BY id DESC LIMIT 1",
        (settings.service, ctx.image_digest),
    ).fetchone()
    if rolled_back and not ctx.options.force:
        return StepOutcome(
            False,
            f"image {ctx.image_digest[:19]} was rolled back in release {rolled_back[0]}:"
            " it is not promoted again unless --force",
            {"checks": checks},
        )
    ctx.ledger.update_release(ctx.release_id, image_digest=ctx.image_digest)
    if ctx.first_release:
        summary = f"all reachable; first release: no color is live, releasing to {ctx.target}"
    else:
        summary = f"all reachable; {live} is live, releasing to {ctx.target}"
    return StepOutcome(True, summary, {"checks": checks})


def _router_state(ctx: ReleaseContext, present: dict[str, str]) -> tuple[RouterState | None, str]:
    """The router's state and a note for the checks table.

    A router that is down is started when no container of the service exists (a first
    release; a dry run only says it would be). With containers it is an error: whatever
    they serve is out of reach.
    """
    from releasegate.errors import InfraError
    from releasegate.router.manager import router_up
    from releasegate.router.state import router_status

    try:
        return router_status(ctx.settings), "ok"
    except InfraError:
        if present:
            raise
    if ctx.options.dry_run:
        return None, "not running: the release starts it"
    started = router_up(ctx.settings)
    return router_status(ctx.settings), f"started ({started.process})"


def plan(ctx: ReleaseContext) -> StepOutcome:
    """Pending migrations of every store, phases and lint; contract needs --allow-contract."""
    from releasegate.migrations import stores
    from releasegate.migrations.plan import plan as pg_plan
    from releasegate.validate import require_valid

    settings = ctx.settings
    require_valid(settings, release=True)  # a ConfigError: exit 2, before the backup
    pg = pg_plan(settings)
    sections: dict[str, Any] = {"postgres": pg.to_dict()}
    others = stores.status(settings, stores.configured_stores(settings)[1:])
    for name, status in others.items():
        sections[name] = status.to_dict()
    # Revisions applied by the migrate step: those before the first contract revision.
    expand: list[str] = []
    for rev in pg.revisions:
        if not rev.runs_before_promotion:  # contract, or a phase that cannot be told
            break
        expand.append(rev.id)
    queued = [r.id for r in pg.revisions[len(expand) :]]
    contract, why_deferred = contract_decision(ctx, queued)
    deferred = [rev for rev in queued if rev not in contract]
    # Kept by a rollback before promotion (blue is compatible with them by the rule).
    irreversible = [r.id for r in pg.revisions[: len(expand)] if r.irreversible_reason]
    sections.update(expand=expand, contract=contract, deferred=deferred, irreversible=irreversible)
    if deferred:
        sections["deferred_reason"] = why_deferred
    ctx.sections["plan"] = sections
    pending = {name: len(s.get("pending", [])) for name, s in sections.items() if name in others}
    summary = f"postgres {len(expand)} expand/data + {len(contract)} contract" + "".join(
        f", {name} {n}" for name, n in pending.items()
    )
    if deferred:
        summary += f"; deferred {', '.join(deferred)} ({why_deferred})"
    if pg.lint_failed:
        return StepOutcome(False, f"lint reached fail_on = {pg.fail_on}: {summary}", sections)
    problems = stores.expand_problems(settings, list(others))
    if problems:
        sections["expand_problems"] = problems
        return StepOutcome(
            False,
            f"cannot run before promotion without breaking the live version: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            {"problems": problems, "exit_code": int(ExitCode.USAGE)},
        )
    behind = [r.id for r in pg.revisions if r.id in deferred and r.runs_before_promotion]
    if behind:
        # The new version may need them, and they cannot run before the contract ahead.
        return StepOutcome(
            False,
            f"revisions {', '.join(behind)} run before promotion but wait behind contract"
            f" revision {deferred[0]}: release the contract first (--allow-contract)",
            {"deferred": deferred, "exit_code": int(ExitCode.USAGE)},
        )
    # What finalize needs if the release is resumed after promotion (see run.resume).
    ctx.ledger.merge_summary(
        ctx.release_id,
        {
            "plan": {
                "expand": expand,
                "contract": contract,
                "deferred": deferred,
                "irreversible": irreversible,
            }
        },
    )
    return StepOutcome(
        True, summary, {"expand": expand, "contract": contract, "deferred": deferred}
    )


def contract_decision(ctx: ReleaseContext, queued: list[str]) -> tuple[list[str], str]:
    """Which queued contract revisions run at this release's finalize, and why the others
    wait (see :func:`contract_timing`)."""
    bake = ctx.settings.raw.release.contract_bake
    since = None
    if queued and not ctx.options.allow_contract and bake is not None:
        since = ctx.ledger.first_deferral(ctx.settings.service, queued[0])
    return contract_timing(queued, ctx.options.allow_contract, bake, since, datetime.now(UTC))


def contract_timing(
    queued: list[str],
    allow_contract: bool,
    bake: float | None,
    deferred_since: datetime | None,
    now: datetime,
) -> tuple[list[str], str]:
    """All queued contract revisions run with --allow-contract; with a bake time, once
    the service has run without what they remove that long (an earlier promoted release
    deferred them ``deferred_since``); else none, and the reason they wait."""
    if not queued or allow_contract:
        return queued, ""
    if bake is None:
        return [], "contract revisions run with --allow-contract"
    if deferred_since is None:
        return [], f"baking {format_duration(bake)} from this release's promotion"
    ready = deferred_since + timedelta(seconds=bake)
    if now < ready:
        return [], f"baking until {ready:%Y-%m-%d %H:%M} UTC"
    return queued, ""


# -- changes ------------------------------------------------------------------------------


def backup(ctx: ReleaseContext) -> StepOutcome:
    """A restore point of every store, verified by restoring it into scratch places."""
    from releasegate.backup import set_create, sets

    manifest = set_create.create(ctx.settings)
    ctx.backup_set = manifest.set_id
    ctx.manifest = manifest.to_dict()
    ctx.record_change(BACKUP, set_id=manifest.set_id)
    ctx.sections["backup"] = ctx.manifest
    verify = ctx.options.verify_backup
    if verify is None:
        verify = ctx.settings.raw.release.verify_backup
    if not verify:
        return StepOutcome(True, f"set {manifest.set_id} (not verified)")
    result = sets.verify(ctx.settings, manifest.set_id)
    ctx.sections["backup_verify"] = result.to_dict()
    if not result.ok:
        return StepOutcome(False, f"backup set {manifest.set_id} did not verify", result.to_dict())
    return StepOutcome(True, f"set {manifest.set_id}, verified in {result.seconds:.1f}s")


def migrate(ctx: ReleaseContext) -> StepOutcome:
    """Expand and data migrations of every store, in order; none breaks the live version.

    Postgres runs its expand/data revisions (contract waits for finalize). Redis and
    Qdrant run in expand form: the new layout is written beside the old one, which the
    live version keeps using until promotion.
    """
    from releasegate.backup import set_restore
    from releasegate.migrations import stores

    plan_sections = ctx.sections["plan"]
    versions = set_restore.live_versions(ctx.settings, stores.configured_stores(ctx.settings))
    done: dict[str, Any] = {}
    if plan_sections["expand"]:
        ctx.record_change(
            POSTGRES,
            before=versions.get("alembic") or "base",
            revisions=plan_sections["expand"],
            irreversible=plan_sections.get("irreversible", []),
        )
        try:
            result = stores.up(ctx.settings, [POSTGRES], plan_sections["expand"][-1])
        except Exception:
            if plan_sections.get("irreversible"):
                # An irreversible revision may have run before the failure: the rollback
                # keeps it, so its verification needs the rows as it left them.
                with contextlib.suppress(Exception):
                    _fingerprint_after_migrate(ctx)
            raise
        done[POSTGRES] = result[POSTGRES].to_dict()
        ctx.update_change(POSTGRES, after=done[POSTGRES]["after"])
        if plan_sections.get("irreversible"):
            _fingerprint_after_migrate(ctx)
    for store in (REDIS, QDRANT):
        if plan_sections.get(store, {}).get("pending"):
            ctx.record_change(store, before=versions.get(store) or "base", form="expand")
            done[store] = stores.expand(ctx.settings, store).to_dict()
    ctx.sections["migrations"] = done
    if not done:
        return StepOutcome.skip("nothing to migrate")
    return StepOutcome(
        True,
        ", ".join(
            f"{s} {d.get('before')} -> {d.get('after')}" + (" (expanded)" if s != POSTGRES else "")
            for s, d in done.items()
        ),
    )


def _fingerprint_after_migrate(ctx: ReleaseContext) -> None:
    """Rows as the irreversible revisions left them: the rollback keeps those revisions,
    so its verification accepts a pre-release row in either form."""
    from releasegate.backup import content

    if ctx.backup_set is None or not ctx.settings.raw.backup.fingerprints:
        return
    out = ctx.out_dir / f"release-{ctx.release_id}" / "postgres.rows.after-migrate.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    content.take_postgres_fingerprints(ctx.settings, out)
    ctx.update_change(POSTGRES, accept=str(out))


def deploy(ctx: ReleaseContext) -> StepOutcome:
    """The new image as the standby color, ready before anything else happens.

    In a first release the router first stops sending requests anywhere (a fresh router
    sends them to blue), so that blue gets none before its gates pass.
    """
    from releasegate.deploy import containers

    assert ctx.target is not None
    if ctx.first_release:
        from releasegate.router import switching

        ctx.sections.setdefault("router", []).append(switching.withdraw(ctx.settings).to_dict())
    ctx.record_change(DEPLOY, color=ctx.target, previous_image=ctx.previous_image)
    result = containers.deploy(
        ctx.settings,
        ctx.target,
        ctx.options.image,
        release=str(ctx.release_id),
        on_progress=ctx.progress,
    )
    ctx.sections["deploy"] = result.to_dict()
    return StepOutcome(True, f"{result.container} ready in {result.ready_after_s:.1f}s")


def smoke(ctx: ReleaseContext) -> StepOutcome:
    """The smoke checks against the new color directly (not through the router)."""
    assert ctx.target is not None
    report = _run_smoke(ctx, _color_url(ctx, ctx.target))
    ctx.sections["smoke"] = report.to_dict()
    passed = len(report.results) - len(report.failed)
    if not report.ok:
        names = ", ".join(r.name for r in report.failed)
        return StepOutcome(False, f"smoke failed: {names}", report.to_dict())
    return StepOutcome(True, f"{passed}/{len(report.results)} checks passed")


def _run_smoke(ctx: ReleaseContext, target: str) -> Any:
    from releasegate.gates.smoke import load_smoke_file, run_smoke

    spec = load_smoke_file(ctx.settings.resolve_path(ctx.settings.raw.smoke.file))
    return run_smoke(spec, target, synthetic_id=ctx.release_id)


def _after_hook(ctx: ReleaseContext, name: str, color: str | None) -> str:
    """Run a cleanup hook (the service deletes its synthetic data); a note for the summary.

    A failing hook is reported, not fatal: the release's own verdict stands, and what the
    synthetic requests wrote is marked, so it can still be found and deleted.
    """
    from releasegate.hooks import run_hook

    result = run_hook(ctx.settings, name, release_id=ctx.release_id, color=color)
    if result is None:
        return ""
    ctx.sections.setdefault("hooks", {})[name] = result.to_dict()
    if result.ok:
        return f"; {name} hook ok ({result.duration_s:.1f}s)"
    return f"; {name} hook FAILED ({result.error or f'exit {result.exit_code}'})"


def slo_gate(ctx: ReleaseContext) -> StepOutcome:
    """The Locust SLO gate against the new color (compared with the live one if configured);
    then the ``after_gate`` hook deletes what the gate's marked requests wrote."""
    from releasegate.gates.slo import run_gate

    assert ctx.target is not None
    if not ctx.settings.raw.release.slo_gate:
        return StepOutcome.skip("release.slo_gate = false: no synthetic load in this environment")
    compare = None
    uncompared = ""
    if ctx.settings.raw.slo.compare.enabled:
        if ctx.live_before is None:
            uncompared = "; no live color to compare with (first release)"
        else:
            compare = _color_url(ctx, ctx.live_before)
    try:
        result = run_gate(
            ctx.settings,
            _color_url(ctx, ctx.target),
            compare_with=compare,
            out_dir=ctx.out_dir / f"release-{ctx.release_id}" / "gate",
            progress=ctx.progress,
            synthetic_id=ctx.release_id,
        )
    finally:
        # Load was sent even when the gate raised: its writes go either way.
        cleanup = _after_hook(ctx, "after_gate", ctx.target)
    ctx.sections["slo"] = result.to_dict()
    summary = f"{result.verdict}: " + ("; ".join(result.reasons) or "every rule passed")
    return StepOutcome(result.passed, summary + uncompared + cleanup)


def _expanded(ctx: ReleaseContext) -> list[str]:
    """The stores this release expanded (Redis, Qdrant), in the undo log's order."""
    return [c["kind"] for c in ctx.changes if c["kind"] in (REDIS, QDRANT)]


def promote(ctx: ReleaseContext) -> StepOutcome:
    """New requests to the new color, with every write the live one made carried over.

    Redis catches up once while blue still serves (the bulk), and again right after the
    switch (what blue wrote meanwhile); Qdrant catches up and moves its alias right after
    the switch. Finalize catches up once more after blue has drained.
    """
    from releasegate.migrations import stores
    from releasegate.router import switching

    assert ctx.target is not None
    ctx.record_change(SWITCH, **{"from": ctx.live_before, "to": ctx.target})
    expanded = _expanded(ctx)
    caught: dict[str, Any] = {}
    if REDIS in expanded:
        caught["redis before switch"] = stores.catch_up(ctx.settings, REDIS).to_dict()
    result = switching.promote(ctx.settings, ctx.target)
    ctx.sections.setdefault("router", []).append(result.to_dict())
    for store in expanded:
        caught[f"{store} after switch"] = stores.catch_up(ctx.settings, store).to_dict()
    if caught:
        ctx.sections["catch_up"] = caught
    return StepOutcome(
        True,
        f"{ctx.target} live (switch {result.switch_s * 1000:.1f} ms)"
        + (f"; caught up {', '.join(expanded)}" if expanded else ""),
    )


def watch(ctx: ReleaseContext) -> StepOutcome:
    """Smoke plus a short SLO check through the router, for the configured window, with
    the watch's thresholds (see :mod:`releasegate.pipeline.watch`)."""
    from releasegate.gates.slo import run_slo_gate
    from releasegate.pipeline.watch import watch_slo
    from releasegate.router.manager import router_address

    window = ctx.options.watch
    if window is None:
        window = ctx.settings.raw.release.watch
    if window <= 0:
        return StepOutcome.skip("no watch window configured")
    address = router_address(ctx.settings)
    report = _run_smoke(ctx, address)
    section: dict[str, Any] = {"smoke": report.to_dict()}
    ctx.sections["watch"] = section
    if not report.ok:
        cleanup = _after_hook(ctx, "after_watch", ctx.target)
        return StepOutcome(False, "smoke through the router failed after promotion" + cleanup)
    result = run_slo_gate(
        watch_slo(ctx.settings.raw.slo, ctx.settings.raw.release, window),
        ctx.settings.root,
        address,
        out_dir=ctx.out_dir / f"release-{ctx.release_id}" / "watch",
        progress=ctx.progress,
        synthetic_id=ctx.release_id,
    )
    section["slo"] = result.to_dict()
    summary = f"through the router: {result.verdict}" + (
        f" ({'; '.join(result.reasons)})" if result.reasons and not result.passed else ""
    )
    return StepOutcome(result.passed, summary + _after_hook(ctx, "after_watch", ctx.target))


def finalize(ctx: ReleaseContext) -> StepOutcome:
    """Stop the old color after its drain window (a first release has none); contract
    revisions; prune old images."""
    from releasegate.deploy import containers
    from releasegate.migrations import stores

    expanded = _expanded(ctx)
    removed = None
    if ctx.live_before is None:
        notes = ["no previous color to stop (first release)"]
    else:
        from releasegate.router.state import wait_drained

        drained = wait_drained(ctx.settings, ctx.live_before, ctx.settings.raw.deploy.drain)
        if REDIS in expanded:
            # What blue's last requests wrote while it drained.
            stores.catch_up(ctx.settings, REDIS)
        ctx.record_change(STOP_PREVIOUS, color=ctx.live_before, image=ctx.previous_image)
        removed = containers.stop(ctx.settings, ctx.live_before)
        notes = [f"{ctx.live_before} stopped" + ("" if drained else " (drain window ran out)")]
    contract = ctx.sections["plan"]["contract"]
    if contract or expanded:
        ctx.record_change(CONTRACT, revisions=contract, stores=expanded)
    for store in expanded:
        stores.contract(ctx.settings, store)
        notes.append(f"{store} old layout removed")
    if contract:
        stores.up(ctx.settings, [POSTGRES])
        notes.append(f"contract {', '.join(contract)} applied")
    pruned = containers.prune_images(ctx.settings, keep=ctx.settings.raw.deploy.keep_images)
    notes.append(f"{len(pruned)} old image(s) pruned")
    return StepOutcome(True, "; ".join(notes), {"removed": removed, "pruned": pruned})


# The pipeline, in order. Everything after ``backup`` is undone on failure.
STEPS: list[tuple[str, Step]] = [
    ("preflight", preflight),
    ("plan", plan),
    ("backup", backup),
    ("migrate", migrate),
    ("deploy", deploy),
    ("smoke", smoke),
    ("slo gate", slo_gate),
    ("promote", promote),
    ("watch", watch),
    ("finalize", finalize),
]
# Past this step the old version is gone: failures no longer roll back automatically.
POINT_OF_NO_RETURN = "finalize"
