"""``releasegate backup``: create, verify, restore, list and prune restore points.

A thin layer over :mod:`releasegate.backup.sets`, :mod:`releasegate.backup.set_create`
and :mod:`releasegate.backup.set_restore`. ``SET`` is a set id, the path of a set folder
(or its ``manifest.json``), or ``latest``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from releasegate.cli import CliState, pass_state

if TYPE_CHECKING:
    from releasegate.backup.base import Difference, StoreBackup
    from releasegate.backup.loss import LossReport
    from releasegate.backup.set_create import Progress

STORE = click.Choice(["postgres", "redis", "qdrant"])
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
store_option = click.option(
    "--store",
    "stores",
    type=STORE,
    multiple=True,
    help="Only this store (repeatable; default: every configured store).",
)


def _echo(text: str = "") -> None:
    from releasegate.output import echo

    echo(text)


def _echo_json(data: object) -> None:
    from releasegate.output import echo_json

    echo_json(data)


def _describe_entry(entry: StoreBackup) -> str:
    if entry.store == "postgres":
        return f"{entry.counts.get('rows', 0)} rows in {len(entry.counts.get('tables', {}))} tables"
    if entry.store == "redis":
        return f"{entry.counts.get('keys', 0)} keys"
    collections = entry.counts.get("collections", {})
    points = sum(int(c.get("points", 0)) for c in collections.values())
    return f"{points} points in {len(collections)} collection(s)"


def _print_progress(event: Progress) -> None:
    from releasegate.backup.sets import format_bytes

    if event.status == "started":
        _echo(f"{event.store}: backing up ...")
        return
    entry = event.entry
    assert entry is not None
    size = format_bytes(sum(f.size for f in entry.files))
    _echo(
        f"{event.store}: {entry.method}, {len(entry.files)} file(s), {size},"
        f" {_describe_entry(entry)} in {event.seconds:.1f}s"
    )


def _differences_table(items: list[Difference]) -> str:
    from releasegate.output import table

    return table(
        ["store", "item", "expected", "found"],
        [(d.store, d.item, _short(d.expected), _short(d.actual)) for d in items],
    )


def _short(value: object, limit: int = 80) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@click.group("backup")
def backup() -> None:
    """Create, verify, restore, list and prune restore points of every store."""


@backup.command("create")
@store_option
@json_option
@pass_state
def create(state: CliState, stores: tuple[str, ...], as_json: bool) -> int:
    """Back up Postgres (and Redis, Qdrant when configured) into a new backup set."""
    from releasegate.backup import set_create, sets
    from releasegate.backup.destinations import destination_for

    settings = state.settings()
    if not stores and not as_json:
        sections = {"redis": settings.raw.redis, "qdrant": settings.raw.qdrant}
        for store, why in sets.configured_stores(settings).items():
            if why is not None and sections.get(store) is not None:
                _echo(f"{store}: skipped ({why})")
    manifest = set_create.create(
        settings, stores=list(stores) or None, on_progress=None if as_json else _print_progress
    )
    path = sets.backup_dir(settings) / manifest.set_id
    destination = destination_for(settings).describe()
    if as_json:
        _echo_json({"path": str(path), "destination": destination, **manifest.to_dict()})
        return 0
    versions = ", ".join(f"{k} {v or '-'}" for k, v in manifest.versions.items())
    _echo(
        f"backup set {manifest.set_id} written to {path}"
        f" ({sets.format_bytes(manifest.total_bytes)}, {manifest.timings.get('total', 0):.1f}s;"
        f" {versions}; ledger release {manifest.ledger_release_id})"
    )
    if destination != str(path.parent):
        _echo(f"uploaded to {destination}")
    return 0


@backup.command("verify")
@click.argument("set_ref", metavar="SET")
@store_option
@json_option
@pass_state
def verify(state: CliState, set_ref: str, stores: tuple[str, ...], as_json: bool) -> int:
    """Check SET's checksums, restore it into scratch places and compare; exit 1 if it differs."""
    from releasegate.backup import sets

    result = sets.verify(state.settings(), set_ref, stores=list(stores) or None)
    if as_json:
        _echo_json(result.to_dict())
        return 0 if result.ok else 1
    _echo(f"backup set {result.set_id} ({result.path}):")
    for store, verdict in result.stores.items():
        _echo(f"  {store}: {verdict}")
    if result.damaged:
        _echo()
        _echo("damaged files (nothing was restored):")
        _echo(_differences_table(result.damaged))
    if result.differences:
        _echo()
        _echo(_differences_table(result.differences))
    _echo(f"{'verified' if result.ok else 'FAILED'} in {result.seconds:.1f}s")
    return 0 if result.ok else 1


@backup.command("restore")
@click.argument("set_ref", metavar="SET")
@store_option
@click.option(
    "--yes", is_flag=True, help="Confirm: replace the stores' contents (else only the report)."
)
@click.option(
    "--while-live",
    is_flag=True,
    help="Allow the restore while a color serves traffic (needed with --yes then).",
)
@json_option
@pass_state
def restore(
    state: CliState,
    set_ref: str,
    stores: tuple[str, ...],
    yes: bool,
    while_live: bool,
    as_json: bool,
) -> int:
    """Show what restoring SET would lose, then restore it with --yes (under the release lock).

    Checksums first; each store is replaced all or nothing. While a color serves traffic
    the restore also needs --while-live. Without the flags it needs, nothing changes and
    the exit code is 2.
    """
    from releasegate.backup import set_restore

    reports: list[LossReport] = []

    def show(report: LossReport) -> None:
        reports.append(report)
        if not as_json:
            for line in report.lines():
                _echo(line)

    try:
        result = set_restore.restore(
            state.settings(),
            set_ref,
            stores=list(stores) or None,
            yes=yes,
            while_live=while_live,
            on_report=show,
        )
    except Exception:
        if as_json and reports:
            _echo_json({"restored": False, "loss": reports[-1].to_dict()})
        raise
    if as_json:
        _echo_json(result.to_dict())
        return 0
    for store in result.stores:
        _echo(f"{store}: restored in {result.timings.get(store, 0.0):.1f}s")
    for store, why in result.skipped.items():
        _echo(f"{store}: skipped ({why})")
    before = ", ".join(f"{k} {v or '-'}" for k, v in result.versions_before.items())
    after = ", ".join(f"{k} {v or '-'}" for k, v in result.versions_after.items())
    _echo(
        f"backup set {result.set_id} restored in {result.seconds:.1f}s: {before} -> {after}"
        f" (ledger release {result.release_id})"
    )
    return 0


@backup.command("list")
@json_option
@pass_state
def list_command(state: CliState, as_json: bool) -> int:
    """The backup sets in backup.dir and at backup.destination, newest first."""
    from releasegate.backup import sets
    from releasegate.backup.destinations import destination_for
    from releasegate.output import table

    settings = state.settings()
    found = sets.list_sets(settings)
    if as_json:
        _echo_json([s.to_dict() for s in found])
        return 0
    if not found:
        _echo(f"no backup sets in {destination_for(settings).describe()}")
        return 0
    rows = []
    for item in found:
        m = item.manifest
        if m is None:
            rows.append((item.set_id, "", "", sets.format_bytes(item.size), "", item.problem))
            continue
        versions = ", ".join(f"{k} {v or '-'}" for k, v in m.versions.items())
        created = m.created_at[:19].replace("T", " ")
        rows.append(
            (
                m.set_id if item.at_destination else f"{m.set_id} (not uploaded)",
                created,
                ", ".join(m.store_names),
                sets.format_bytes(item.size),
                versions,
                m.performer,
            )
        )
    _echo(table(["set", "created (UTC)", "stores", "size", "versions", "performer"], rows))
    return 0


@backup.command("prune")
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    help="How many of the newest sets to keep (default: backup.keep).",
)
@json_option
@pass_state
def prune(state: CliState, keep: int | None, as_json: bool) -> int:
    """Remove the oldest backup sets, keeping the newest N."""
    from releasegate.backup import sets

    removed = sets.prune(state.settings(), keep)
    if as_json:
        _echo_json([s.to_dict() for s in removed])
        return 0
    for item in removed:
        _echo(f"removed {item.set_id} ({sets.format_bytes(item.size)})")
    _echo(f"{len(removed)} set(s) removed")
    return 0
