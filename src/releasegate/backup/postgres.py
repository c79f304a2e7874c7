"""Postgres restore points: ``pg_dump`` out, ``pg_restore`` back, checked by restoring.

The four operations of :mod:`releasegate.backup.base`:

- :func:`backup` runs ``pg_dump`` in custom format (``-Fc``, one file ``postgres.dump``)
  or directory format (``-Fd -j backup.jobs``, the folder ``postgres/``). The dump runs on
  a snapshot exported by releasegate's own repeatable-read transaction
  (``pg_export_snapshot()`` + ``pg_dump --snapshot``), and the row counts, the schema
  snapshot and the Alembic revision recorded in the manifest are read in that same
  transaction while ``pg_dump`` works: they describe exactly what the dump holds. So are
  the per-row digests of ``postgres.rows.gz`` (``backup.fingerprints``, on by default;
  :mod:`releasegate.backup.content_postgres`), listed and checksummed like the dump.
- :func:`restore` (:func:`stage`, then commit) replaces the database's contents in ONE
  transaction: ``pg_restore --file=-`` relayed to ``psql`` after the ``DROP`` of every
  object outside the ledger, ``COMMIT`` last, so a failure changes nothing (see
  :class:`StagedRestore`). A database holding any table, view or sequence outside the
  ledger is refused unless ``force``. Sequences are never rewound.
- :func:`verify` restores into a scratch database (:func:`releasegate.db.scratch_database`)
  and compares its schema snapshot, rows per table and Alembic revision with the manifest.
- :func:`counts` reads the live figures in the manifest's shape.

**The ledger is not part of a restore point.** Schema ``releasegate`` is excluded from
the dump (``--exclude-schema``) and from the restore: the ledger is evidence of what
happened, and restoring a backup must not roll that evidence back.

The client programs are found and run by :mod:`releasegate.backup.postgres_tools` (the
password reaches them through ``PGPASSWORD``: it never appears on a command line, in a
log line or in the manifest); what the database holds is read by
:mod:`releasegate.backup.postgres_contents`; the set's files are named in
:mod:`releasegate.backup.postgres_files`; the restore is
:mod:`releasegate.backup.postgres_restore`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from releasegate import db
from releasegate.backup import content_postgres
from releasegate.backup.base import Difference, FileEntry, StoreBackup
from releasegate.backup.postgres_contents import (
    EXCLUDED_SCHEMAS,
    alembic_revisions,
    connect,
    count_rows,
    database_sizes,
    format_alembic,
    take_snapshot,
)
from releasegate.backup.postgres_files import DUMP_DIR, DUMP_FILE, STORE, dump_source
from releasegate.backup.postgres_files import required_files as required_files  # the contract
from releasegate.backup.postgres_restore import StagedRestore, run_restore
from releasegate.backup.postgres_tools import ToolRun, find_tool, libpq_target, read_server_version
from releasegate.config import Settings
from releasegate.errors import InfraError
from releasegate.migrations import schema as schema_snapshot


def estimate_size(settings: Settings) -> int:
    """A generous estimate of a dump's size: the size of the service's tables (no indexes,
    no ledger), before compression."""
    url = settings.postgres_url()
    with connect(settings, url, "backup estimate") as conn:
        return database_sizes(conn)["table_bytes"]


def counts(settings: Settings) -> dict[str, Any]:
    """Live figures in the manifest's shape: ``{"tables": {"public.users": 5000, ...},
    "rows": total}`` (exact ``count(*)``, ledger excluded)."""
    url = settings.postgres_url()
    with connect(settings, url, "backup counts") as conn:
        tables = count_rows(conn)
    return {"tables": tables, "rows": sum(tables.values())}


# -- backup -------------------------------------------------------------------------------


def _dump_args(fmt: str, out: Path, jobs: int, snapshot_id: str | None) -> list[str]:
    args = [
        "--format=directory" if fmt == "directory" else "--format=custom",
        f"--file={out}",
        "--no-password",
        *(f"--exclude-schema={s}" for s in EXCLUDED_SCHEMAS),
    ]
    if fmt == "directory" and jobs > 1:
        args.append(f"--jobs={jobs}")
    if snapshot_id:
        args.append(f"--snapshot={snapshot_id}")
    return args


def backup(settings: Settings, set_dir: Path) -> StoreBackup:
    """Dump the configured database into ``set_dir`` and describe it (module docstring).

    Raises :class:`ConfigError` for a missing or too old ``pg_dump``,
    :class:`InfraError` when the server cannot be reached or the disk fills up, and
    :class:`CheckFailed` for any other ``pg_dump`` failure.
    """
    url = settings.postgres_url()
    opts = settings.raw.backup
    fmt = opts.postgres_format
    target = db.describe_target(db.check_url(url, f"${settings.raw.postgres.url_env}"))
    set_dir.mkdir(parents=True, exist_ok=True)
    out = set_dir / (DUMP_DIR if fmt == "directory" else DUMP_FILE)
    libpq_url, env = libpq_target(url, "backup pg_dump")
    timings: dict[str, float] = {}
    with connect(settings, url, "backup") as conn:
        major, server_version = read_server_version(conn)
        tool = find_tool("pg_dump", major)
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            snapshot_id = str(row[0]) if row else None
            run = ToolRun(tool, [*_dump_args(fmt, out, opts.jobs, snapshot_id), libpq_url], env)
            try:
                # Read in the dump's own snapshot while pg_dump works.
                started = time.monotonic()
                tables = count_rows(conn)
                timings["counts"] = time.monotonic() - started
                started = time.monotonic()
                snap = take_snapshot(conn)
                revisions = alembic_revisions(conn)
                sizes = database_sizes(conn)
                timings["schema"] = time.monotonic() - started
                fingerprints: dict[str, Any] | None = None
                if opts.fingerprints:
                    started = time.monotonic()
                    rows_file = set_dir / content_postgres.ROWS_FILE
                    fingerprints = content_postgres.write_fingerprints(conn, rows_file)
                    timings["fingerprints"] = time.monotonic() - started
            except BaseException:
                run.kill()
                raise
            timings["dump"] = run.wait(target)
    started = time.monotonic()
    paths = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
    if fingerprints is not None:
        paths.append(set_dir / content_postgres.ROWS_FILE)
    files = [FileEntry.of(set_dir, p) for p in paths]
    timings["checksums"] = time.monotonic() - started
    alembic = format_alembic(revisions)
    return StoreBackup(
        store=STORE,
        method=f"pg_dump {fmt}",
        files=files,
        counts={"tables": tables, "rows": sum(tables.values())},
        versions={"alembic": alembic},
        tools={"pg_dump": tool.version, "postgres": server_version},
        timings={k: round(v, 3) for k, v in timings.items()},
        extra={
            "database": target,
            "format": fmt,
            "jobs": opts.jobs if fmt == "directory" else 1,
            "excluded_schemas": list(EXCLUDED_SCHEMAS),
            "alembic_revisions": None if revisions is None else list(revisions),
            "bytes": sum(f.size for f in files),
            **sizes,
            "schema_fingerprint": snap.fingerprint(),
            "schema": snap.to_json(),
            "fingerprints": fingerprints,
        },
    )


def stage(
    settings: Settings, set_dir: Path, entry: StoreBackup, *, force: bool = False
) -> StagedRestore:
    """Prepare the restore of the set's dump in one open transaction (:class:`StagedRestore`).

    Refuses (:class:`StateError`, exit 1) a database that holds any table, view or sequence
    outside the ledger, unless ``force``: then everything but the ledger is dropped in
    the restore's own transaction. The ledger schema is never touched.
    """
    return StagedRestore(settings, set_dir, entry, force=force)


def restore(
    settings: Settings, set_dir: Path, entry: StoreBackup, *, force: bool = False
) -> dict[str, Any]:
    """Restore the set's dump into the configured database: schema, data, ``alembic_version``,
    all or nothing (:func:`stage`, then :meth:`StagedRestore.commit`).

    Sequences are never rewound below what they had handed out. Returns the restored
    figures.
    """
    return stage(settings, set_dir, entry, force=force).commit()


# -- verify -------------------------------------------------------------------------------


def compare(
    entry: StoreBackup,
    tables: dict[str, int],
    snap: schema_snapshot.SchemaSnapshot | None,
    alembic: str | None,
) -> list[Difference]:
    """What differs between a Postgres manifest entry and the figures of a restored copy."""
    found: list[Difference] = []
    expected_tables: dict[str, int] = entry.counts.get("tables", {})
    for name in sorted(expected_tables.keys() | tables.keys()):
        want = expected_tables.get(name, "absent")
        have = tables.get(name, "absent")
        if want != have:
            found.append(Difference(STORE, f"rows {name}", want, have))
    if snap is not None and "schema" in entry.extra:
        expected = schema_snapshot.SchemaSnapshot.from_json(entry.extra["schema"])
        for d in schema_snapshot.diff(expected, snap):
            found.append(
                Difference(STORE, f"schema {d.key}", d.expected or "absent", d.actual or "absent")
            )
    want_rev = entry.versions.get("alembic")
    if want_rev != alembic:
        found.append(Difference(STORE, "alembic revision", want_rev, alembic))
    return found


def verify(settings: Settings, set_dir: Path, entry: StoreBackup) -> list[Difference]:
    """Restore the dump into a scratch database and compare it with the manifest.

    Compared: the schema snapshot (tables, columns, indexes, constraints, ...), the exact
    rows of every table and the Alembic revision. Ownership and privileges are not
    restored there (``--no-owner --no-privileges``): the scratch copy belongs to the
    connecting role. The scratch database is dropped afterwards. An empty list means the
    backup restores to what the manifest records.
    """
    url = settings.postgres_url()
    source = dump_source(set_dir, entry)
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    with db.scratch_database(
        url,
        settings.raw.postgres.maintenance_db,
        f"rg_verify_{settings.service}",
        connect_timeout=settings.raw.postgres.connect_timeout,
    ) as scratch_url:
        try:
            run_restore(settings, scratch_url, source, clean=False, owners=False, purpose="verify")
            with connect(settings, scratch_url, "backup verify") as conn:
                tables = count_rows(conn)
                snap = take_snapshot(conn)
                alembic = format_alembic(alembic_revisions(conn))
        finally:
            _drop_waiting_for_autovacuum(settings, scratch_url)
    return compare(entry, tables, snap, alembic)


def _drop_waiting_for_autovacuum(settings: Settings, url: str) -> None:
    """Drop a scratch database with a plain ``DROP DATABASE`` first.

    A freshly restored database draws autovacuum workers. ``DROP DATABASE ... WITH
    (FORCE)``, run by a role that is not a superuser, fails on them ("must be a member of
    the role whose process is being terminated"), whereas a plain ``DROP DATABASE`` stops
    them itself. Whatever fails here is left to the scratch database's own cleanup.
    """
    admin_url = db.with_database(url, settings.raw.postgres.maintenance_db)
    with (
        contextlib.suppress(psycopg.Error, InfraError),
        connect(settings, admin_url, "scratch") as admin,
    ):
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db.database_name(url)))
        )
