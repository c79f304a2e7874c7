"""``releasegate release`` and ``releasegate rollback``: the whole upgrade, and its undo."""

from __future__ import annotations

import sys
from typing import Any

import click

from releasegate.cli import CliState, pass_state


def _publish(state: CliState, result: Any, as_json: bool) -> int:
    """Write the evidence reports, tell GitHub Actions, print the summary; the exit code."""
    from releasegate.output import echo, echo_json
    from releasegate.report import github
    from releasegate.report.files import write_reports
    from releasegate.report.text import render_text

    settings = state.settings()
    data = result.to_dict()
    paths = write_reports(data, settings.resolve_path(settings.raw.release.report_dir))
    env = github.GithubEnv.from_environ()
    if env is not None:
        github.publish(data, paths, env)
    if as_json:
        echo_json({**data, "reports": {"json": str(paths.json), "markdown": str(paths.markdown)}})
    else:
        echo(render_text(data))
        echo(f"reports: {paths.json} {paths.markdown}")
    code = int(data["exit_code"])
    if data.get("outcome") == "paused":
        # Not an error: the run stops on purpose, with the weight in place.
        last = (data.get("steps") or [{}])[-1]
        echo(f"paused: {last.get('name')}: {last.get('summary')}", err=True)
    elif code != 0:
        # The report is on stdout; the verdict is the one error line, as for any failure.
        echo(f"error: {data.get('outcome')}: {data.get('error') or 'see the report'}", err=True)
    return code


@click.command("release")
@click.option("--image", metavar="REF", help="The image to release (a tag, id or digest).")
@click.option("--dry-run", is_flag=True, help="Preflight and plan only; change nothing.")
@click.option(
    "--allow-contract",
    is_flag=True,
    help="Apply contract migrations (at finalize, after the old version stops).",
)
@click.option(
    "--resume",
    "resume_",
    is_flag=True,
    help="Continue a paused release, or finish or roll back an interrupted one.",
)
@click.option("--force", is_flag=True, help="Release an image that was rolled back before.")
@click.option(
    "--no-verify-backup", is_flag=True, help="Skip restoring the backup into scratch places."
)
@click.option("--watch", "watch_s", type=float, help="Post-promotion watch window in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the release result as JSON.")
@pass_state
def release(
    state: CliState,
    image: str | None,
    dry_run: bool,
    allow_contract: bool,
    resume_: bool,
    force: bool,
    no_verify_backup: bool,
    watch_s: float | None,
    as_json: bool,
) -> int:
    """Release IMAGE: preflight, plan, backup, migrate, deploy, smoke, SLO gate, canary
    steps ([release.canary]), promote, watch, finalize. Any failure after the first change
    rolls back automatically and verifies the rollback (exit 1); a failed rollback exits 4
    with the manual steps; a canary pause exits 5 until --resume continues it."""
    from releasegate.pipeline import run
    from releasegate.pipeline.context import ReleaseOptions
    from releasegate.report.live import StepDisplay

    settings = state.settings()
    if resume_ == bool(image):
        raise click.UsageError("give either --image REF or --resume")
    if image is not None:
        # A missing image is bad input: refused (exit 2) before the lock and the ledger.
        from releasegate.deploy import containers
        from releasegate.deploy.engine import connect as docker_connect

        containers.resolve_image(docker_connect(settings), image, pull=not dry_run)
        # What the config refers to, env.py included: bad input is refused the same way.
        from releasegate.validate import require_valid

        require_valid(settings, release=True)
    with StepDisplay(stream=sys.stderr) as display:
        if resume_:
            result = run.resume(settings, listener=display, force=force)
        else:
            assert image is not None
            options = ReleaseOptions(
                image=image,
                dry_run=dry_run,
                allow_contract=allow_contract,
                force=force,
                verify_backup=False if no_verify_backup else None,
                watch=watch_s,
            )
            result = run.release(settings, options, listener=display, progress=display.note)
    return _publish(state, result, as_json)


@click.command("rollback")
@click.option("--to", "release_id", type=int, metavar="RELEASE", help="The release to undo.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def rollback(state: CliState, release_id: int | None, as_json: bool) -> int:
    """Undo the last release (or RELEASE) by hand, with the same verification."""
    from releasegate.pipeline import run
    from releasegate.report.live import StepDisplay

    with StepDisplay(stream=sys.stderr) as display:
        result = run.rollback(state.settings(), release_id, listener=display)
    return _publish(state, result, as_json)
