"""``releasegate history`` and ``releasegate ledger setup``: reading and guarding the ledger."""

from __future__ import annotations

import click

from releasegate.cli import CliState, pass_state


@click.command("history")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with each release's events).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--id", "release_id", type=int, help="Show one release, its steps and own runs.")
@click.option("--all-services", is_flag=True, help="Not only this config's service.")
@click.option(
    "--all", "nested", is_flag=True, help="Also the backups, migrations, restores a release ran."
)
@click.option(
    "--kind",
    type=click.Choice(["release", "rollback", "dry-run", "migrate", "backup", "restore"]),
    help="Only rows of this kind.",
)
@pass_state
def history(
    state: CliState,
    as_json: bool,
    limit: int,
    release_id: int | None,
    all_services: bool,
    nested: bool,
    kind: str | None,
) -> int:
    """List releases recorded in the ledger, newest first: one row per release."""
    from releasegate.errors import ConfigError
    from releasegate.ledger import Ledger
    from releasegate.ledger.views import HISTORY_HEADERS, history_row
    from releasegate.output import echo, echo_json, table

    settings = state.settings()
    with Ledger.open(settings.postgres_url(), "history") as ledger:
        if release_id is not None:
            release = ledger.release(release_id)
            if release is None:
                raise ConfigError(f"no release with id {release_id} in the ledger")
            releases = [release]
            children = ledger.children(release_id)
        else:
            service = None if all_services else settings.service
            releases = ledger.releases(
                service, limit, with_events=as_json, nested=nested, kind=kind
            )
            children = []
    if as_json:
        data = [r.to_dict() for r in releases]
        if release_id is not None:
            data[0]["children"] = [c.to_dict() for c in children]
        echo_json(data)
        return 0
    rows = [history_row(r, depth=int(nested and r.parent_id is not None)) for r in releases]
    rows += [history_row(c, depth=1) for c in children]
    echo(table(HISTORY_HEADERS, rows))
    if release_id is not None:
        echo()
        echo(
            table(
                ["at", "step", "status", "ms", "detail"],
                [
                    (
                        f"{e.at:%H:%M:%S.%f}"[:-3],
                        e.step,
                        e.status,
                        "" if e.duration_ms is None else f"{e.duration_ms:.0f}",
                        e.detail.get("error") or e.detail.get("doc") or "",
                    )
                    for e in releases[0].events
                ],
            )
        )
    return 0


@click.group("ledger")
def ledger() -> None:
    """The release ledger's own setup."""


@ledger.command("setup")
@click.option(
    "--owner-url-env",
    required=True,
    metavar="VAR",
    help="Environment variable holding the URL of the role that is to own the ledger.",
)
@click.option(
    "--releaser",
    metavar="ROLE",
    help="The releasing role (default: the user of the configured Postgres URL).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def setup(state: CliState, owner_url_env: str, releaser: str | None, as_json: bool) -> int:
    """Let a separate role own the ledger; the releasing role may only append to it.

    Creates or upgrades the ledger schema as the owner, then resets the releasing
    role's privileges to what releasegate needs. Safe to run again (after an upgrade
    of releasegate, it applies newer ledger versions).
    """
    from psycopg.conninfo import conninfo_to_dict

    from releasegate import db
    from releasegate.errors import ConfigError
    from releasegate.ledger.access import setup_owned_ledger
    from releasegate.output import echo, echo_json

    settings = state.settings()
    owner_url = settings.env.get(owner_url_env)
    if not owner_url:
        raise ConfigError(f"${owner_url_env} is not set: it must hold the ledger owner's URL")
    if releaser is None:
        user = conninfo_to_dict(db.check_url(settings.postgres_url())).get("user")
        if not user:
            raise ConfigError("the configured Postgres URL names no user: pass --releaser ROLE")
        releaser = str(user)
    result = setup_owned_ledger(owner_url, releaser)
    if as_json:
        echo_json(result.to_dict())
        return 0
    echo(f"ledger owned by {result.owner}; {result.versions_applied} version(s) applied")
    echo(f"{result.releaser} may read the ledger and append to it:")
    for statement in result.statements:
        echo(f"  {statement}")
    return 0
