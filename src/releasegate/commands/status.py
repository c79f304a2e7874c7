"""``releasegate status``: every store, the last backup and the last release at a glance."""

from __future__ import annotations

from typing import Any

import click

from releasegate.cli import CliState, pass_state


def overview(settings: Any) -> dict[str, Any]:
    """Store versions and problems, the newest backup set and the newest ledger release.

    The last release is the newest top-level row: a release's own backup, migrations
    and restores (its children in the ledger) are part of it, not releases of their own.
    """
    from releasegate.backup.sets import list_sets
    from releasegate.ledger import Ledger
    from releasegate.ledger.views import one_line
    from releasegate.migrations import stores

    results = stores.status(settings, stores.configured_stores(settings))
    sets = [s for s in list_sets(settings) if s.manifest is not None]
    with Ledger.open(settings.postgres_url(), "status") as ledger:
        releases = ledger.releases(settings.service, limit=1)
    last = releases[0].to_dict() if releases else None
    if last is not None:
        last["line"] = one_line(releases[0])
    return {
        "service": settings.service,
        "ok": all(result.ok for result in results.values()),
        "stores": {name: result.to_dict() for name, result in results.items()},
        "last_backup": sets[0].to_dict() if sets else None,
        "last_release": last,
    }


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def status(state: CliState, as_json: bool) -> int:
    """All stores, the last backup and the last release; exit 1 on a store problem."""
    from releasegate.output import echo, echo_json

    data = overview(state.settings())
    if as_json:
        echo_json(data)
        return 0 if data["ok"] else 1
    echo(f"service: {data['service']}")
    for name, store in data["stores"].items():
        current = store.get("current", store.get("version"))
        if isinstance(current, list):
            current = ", ".join(current) or "base"
        pending = len(store.get("pending", []))
        echo(f"  {name:<9} {current or 'never migrated'}  ({pending} pending)")
        for problem in store.get("problems", []):
            echo(f"            problem: {problem}")
    backup = data["last_backup"]
    echo(
        f"last backup:  {backup['set_id']} ({', '.join(backup['stores'])})"
        if backup
        else "last backup:  none"
    )
    release = data["last_release"]
    echo(f"last release: {release['line'] if release else 'none'}")
    return 0 if data["ok"] else 1
