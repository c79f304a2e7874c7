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

The password reaches ``pg_dump``, ``pg_restore`` and ``psql`` through the ``PGPASSWORD``
environment of the child process: it never appears on a command line, in a log line or
in the manifest. ``pg_dump`` must be at least as new as the server: the binary is looked
up as ``/usr/lib/postgresql/<server major>/bin/pg_dump`` first (Debian/Ubuntu's layout),
then a newer installed version there, then ``PATH``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from releasegate import db
from releasegate.backup import content_postgres
from releasegate.backup.base import CHUNK, Difference, FileEntry, StoreBackup, set_file
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError, InfraError, RollbackFailed, StateError
from releasegate.ledger.schema import LEDGER_SCHEMA
from releasegate.migrations import schema as schema_snapshot
from releasegate.secrets import redact

STORE = "postgres"
DUMP_FILE = "postgres.dump"  # custom format
DUMP_DIR = "postgres"  # directory format
EXCLUDED_SCHEMAS: tuple[str, ...] = (LEDGER_SCHEMA,)
PG_LIB = Path("/usr/lib/postgresql")

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_TAIL_LINES = 40


# -- the client tools ---------------------------------------------------------------------


@dataclass(frozen=True)
class PgTool:
    """One PostgreSQL client program and its version."""

    name: str
    path: str
    version: str
    major: int


def server_major(version_num: int) -> int:
    """The major version from ``server_version_num`` (150018 -> 15, 90624 -> 9)."""
    return version_num // 10000


def parse_tool_version(text: str) -> tuple[str, int]:
    """``("15.18", 15)`` from ``pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)``."""
    match = _VERSION_RE.search(text)
    if not match:
        raise ConfigError(f"cannot read the version of a PostgreSQL client from {text.strip()!r}")
    major = int(match.group(1))
    version = f"{major}.{match.group(2)}" if match.group(2) else str(major)
    return version, major


def check_compatible(tool: str, tool_major: int, server: int) -> None:
    """Raise :class:`ConfigError` when ``tool`` (``pg_dump``, ``pg_restore``) is older than
    the server's major version: it would refuse, or produce an incomplete dump."""
    if tool_major < server:
        raise ConfigError(
            f"{tool} {tool_major} cannot {'dump' if tool == 'pg_dump' else 'restore into'}"
            f" a PostgreSQL {server} server: install postgresql-client-{server}"
        )


def _candidates(name: str, server: int) -> list[str]:
    preferred = PG_LIB / str(server) / "bin" / name
    found = [str(preferred)] if preferred.is_file() else []
    if PG_LIB.is_dir():
        newer = sorted(
            (
                int(d.name)
                for d in PG_LIB.iterdir()
                if d.name.isdigit() and int(d.name) > server and (d / "bin" / name).is_file()
            ),
            reverse=True,
        )
        found += [str(PG_LIB / str(major) / "bin" / name) for major in newer]
    if on_path := shutil.which(name):
        found.append(on_path)
    return found


@functools.lru_cache(maxsize=16)
def find_tool(name: str, server: int) -> PgTool:
    """The ``pg_dump``/``pg_restore`` to use against a server of major version ``server``.

    ``/usr/lib/postgresql/<server>/bin/<name>`` when present, else the newest newer one
    there, else the one on ``PATH``; raises :class:`ConfigError` when none exists or the
    chosen one is older than the server.
    """
    candidates = _candidates(name, server)
    if not candidates:
        raise ConfigError(f"{name} not found: install postgresql-client-{server}")
    path = candidates[0]
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {path} --version: {exc}") from None
    version, major = parse_tool_version(out.stdout or out.stderr)
    check_compatible(name, major, server)
    return PgTool(name, path, version, major)


def _server_version(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
    ).fetchone()
    assert row is not None
    return server_major(int(row[0])), str(row[1]).split()[0]


def libpq_target(url: str, purpose: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment carrying it (``PGPASSWORD``).

    The password, from the user info or a ``?password=`` query value, is percent-decoded
    (libpq decodes the URL, not the environment). The child's ``application_name``
    names releasegate and the performer, as for every releasegate connection.
    """
    libpq_url, password = db.split_password(url)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    env["PGAPPNAME"] = db.application_name(purpose)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return libpq_url, env


class ToolRun:
    """A running client program whose stderr is streamed (logged at debug, tail kept)."""

    def __init__(
        self,
        tool: PgTool,
        args: Sequence[str],
        env: dict[str, str],
        *,
        pipe_in: bool = False,
        pipe_out: bool = False,
    ) -> None:
        self.tool = tool
        self.started = time.monotonic()
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        try:
            # Binary pipes (``pipe_in``/``pipe_out``) carry SQL between two programs.
            self.proc = subprocess.Popen(
                [tool.path, *args],
                env=env,
                stdin=subprocess.PIPE if pipe_in else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_out else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise InfraError(f"cannot run {tool.name}: {exc}") from None
        assert self.proc.stderr is not None
        stderr = io.TextIOWrapper(self.proc.stderr, errors="replace")
        self._reader = threading.Thread(target=self._read, args=(stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for raw in stream:
            line = redact(raw.rstrip())
            if line:
                self.tail.append(line)
                log.debug("%s: %s", self.tool.name, line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.proc.wait()
        self._reader.join(timeout=5)

    def finish(self) -> int:
        """Wait for the program and its last message; its exit code."""
        code = self.proc.wait()
        self._reader.join(timeout=10)
        return code

    def wait(self, target: str) -> float:
        """Wait for the program; raise a one-line error if it failed. Returns seconds."""
        code = self.finish()
        took = time.monotonic() - self.started
        if code != 0:
            raise tool_error(self.tool.name, code, list(self.tail), target)
        return took


def _reason(lines: list[str]) -> str:
    errors = [ln for ln in lines if "error:" in ln.lower() or "fatal:" in ln.lower()]
    chosen = errors[0] if errors else (lines[-1] if lines else "no message")
    for prefix in ("pg_dump: error: ", "pg_restore: error: ", "pg_dump: ", "pg_restore: "):
        chosen = chosen.removeprefix(prefix)
    return " ".join(chosen.split())[:300]


def tool_error(name: str, code: int, lines: list[str], target: str) -> InfraError | CheckFailed:
    """The one-line error for a failed ``pg_dump``/``pg_restore`` run."""
    reason = _reason(lines)
    text = " ".join(lines).lower()
    message = f"{name} failed on {target} (exit {code}): {reason}"
    if "no space left on device" in text:
        return InfraError(f"{name} failed on {target}: no space left on device")
    if "connection to server" in text or "could not connect" in text:
        return InfraError(message)
    return CheckFailed(message)


# -- reading the database -----------------------------------------------------------------

# Relations of the service: user schemas except the ledger, no members of an extension.
_RELATIONS = """
SELECT c.relkind, n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND n.nspname <> ALL (%(excluded)s::text[])
  AND c.relkind = ANY (%(kinds)s::"char"[])
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend d
      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
  )
ORDER BY n.nspname, c.relname
"""


def _relations(conn: psycopg.Connection[Any], kinds: str) -> list[tuple[str, str, str]]:
    rows = conn.execute(
        _RELATIONS, {"excluded": list(EXCLUDED_SCHEMAS), "kinds": list(kinds)}
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def count_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact rows of every table of the service (``schema.table`` -> rows), ledger excluded.

    Partitions are counted, partitioned parents are not (their rows are the partitions').
    """
    counted: dict[str, int] = {}
    for _kind, schema, table in _relations(conn, "r"):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        counted[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counted


def alembic_revisions(conn: psycopg.Connection[Any]) -> tuple[str, ...] | None:
    """The revisions in ``alembic_version`` (``public`` first); None when there is none."""
    rel = [(s, t) for _k, s, t in _relations(conn, "rp") if t == "alembic_version"]
    if not rel:
        return None
    schema, table = sorted(rel, key=lambda st: st[0] != "public")[0]
    query = sql.SQL("SELECT version_num FROM {}.{} ORDER BY version_num").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    return tuple(str(r[0]) for r in conn.execute(query).fetchall())


def format_alembic(revisions: tuple[str, ...] | None) -> str | None:
    """``"0006"``, ``"a, b"`` for several heads, ``"base"`` when empty, None if never migrated."""
    if revisions is None:
        return None
    return ", ".join(revisions) if revisions else "base"


def take_snapshot(conn: psycopg.Connection[Any]) -> schema_snapshot.SchemaSnapshot:
    """The schema snapshot a backup records: ledger excluded, ``alembic_version`` included."""
    return schema_snapshot.snapshot(conn, exclude_schemas=EXCLUDED_SCHEMAS, exclude_tables=())


def _size(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute(
        "SELECT pg_database_size(current_database()),"
        " coalesce(sum(pg_table_size(c.oid)), 0)::bigint"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'm') AND n.nspname !~ '^pg_'"
        " AND n.nspname <> 'information_schema' AND n.nspname <> ALL (%s::text[])",
        (list(EXCLUDED_SCHEMAS),),
    ).fetchone()
    assert row is not None
    return {"database_bytes": int(row[0]), "table_bytes": int(row[1])}


def estimate_size(settings: Settings) -> int:
    """A generous estimate of a dump's size: the size of the service's tables (no indexes,
    no ledger), before compression."""
    url = settings.postgres_url()
    with _connect(settings, url, "backup estimate") as conn:
        return _size(conn)["table_bytes"]


def _connect(settings: Settings, url: str, purpose: str) -> psycopg.Connection[Any]:
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    return db.connect(url, purpose, connect_timeout=settings.raw.postgres.connect_timeout)


def counts(settings: Settings) -> dict[str, Any]:
    """Live figures in the manifest's shape: ``{"tables": {"public.users": 5000, ...},
    "rows": total}`` (exact ``count(*)``, ledger excluded)."""
    url = settings.postgres_url()
    with _connect(settings, url, "backup counts") as conn:
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
    with _connect(settings, url, "backup") as conn:
        major, server_version = _server_version(conn)
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
                sizes = _size(conn)
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


# -- restore ------------------------------------------------------------------------------


def _dump_format(entry: StoreBackup) -> str:
    fmt = entry.extra.get("format") or ("directory" if "directory" in entry.method else "custom")
    return "directory" if fmt == "directory" else "custom"


def required_files(entry: StoreBackup) -> list[str]:
    """The manifest file names a restore of ``entry`` reads: ``postgres.dump``, or the
    ``toc.dat`` and data files of ``postgres/`` (all listed ones) in directory format."""
    if _dump_format(entry) == "custom":
        return [DUMP_FILE]
    listed = [f.name for f in entry.files if f.name.startswith(f"{DUMP_DIR}/")]
    return list(dict.fromkeys([f"{DUMP_DIR}/toc.dat", *listed]))


def dump_source(set_dir: Path, entry: StoreBackup) -> Path:
    """The dump file (custom) or folder (directory format) of a Postgres entry.

    Only files the manifest lists (and so were checksummed) may be read: a missing entry,
    a file outside the set folder or, in directory format, an unlisted file in the dump
    folder is :class:`CheckFailed`.
    """
    listed = {f.name for f in entry.files}
    for name in required_files(entry):
        if name not in listed:
            raise CheckFailed(
                f"backup set {set_dir.name} is damaged: the manifest lists no file {name}"
            )
    if _dump_format(entry) == "custom":
        path = set_file(set_dir, DUMP_FILE)
    else:
        path = set_file(set_dir, DUMP_DIR)
        extra = sorted(
            name
            for p in path.rglob("*")
            if not p.is_dir() and (name := p.relative_to(set_dir).as_posix()) not in listed
        )
        if extra:
            raise CheckFailed(
                f"backup set {set_dir.name} is damaged: {extra[0]} is in the dump folder"
                " but not in the manifest"
            )
    if not path.exists():
        raise CheckFailed(f"postgres dump {path.name} is missing from backup set {set_dir.name}")
    return path


def occupied(conn: psycopg.Connection[Any]) -> list[str]:
    """Tables, views, sequences of the service in the database (the ledger excluded)."""
    return [f"{s}.{t}" for _k, s, t in _relations(conn, "rpvmSf")]


def _approximate_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(n_live_tup), 0)::bigint FROM pg_stat_user_tables"
        " WHERE schemaname <> ALL (%s::text[])",
        (list(EXCLUDED_SCHEMAS),),
    ).fetchone()
    return int(row[0]) if row else 0


def describe_occupancy(conn: psycopg.Connection[Any]) -> str | None:
    """None when the database holds nothing of the service (ledger aside), else a summary
    such as ``5 tables (public.alembic_version, public.audit_log, ...; about 1000 rows)``."""
    found = occupied(conn)
    if not found:
        return None
    tables = [f"{s}.{t}" for _k, s, t in _relations(conn, "rpf")]
    names = tables or found
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    what = f"{len(tables)} table(s)" if tables else f"{len(found)} relation(s)"
    return f"{what} ({shown}; about {_approximate_rows(conn)} rows)"


def refuse_non_empty(conn: psycopg.Connection[Any], target: str) -> None:
    """Raise :class:`StateError` when the database holds anything of the service."""
    if (what := describe_occupancy(conn)) is not None:
        raise StateError(
            f"refusing to restore into non-empty Postgres {target}: it holds {what};"
            " restore with force (--yes) to replace its contents"
        )


_SCHEMAS_TO_DROP = """
SELECT n.nspname FROM pg_catalog.pg_namespace n
WHERE n.nspname !~ '^pg_' AND n.nspname NOT IN ('information_schema', 'public')
  AND n.nspname <> ALL (%(excluded)s::text[])
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
                  AND d.classid = 'pg_catalog.pg_namespace'::regclass AND d.objid = n.oid)
ORDER BY 1
"""

_ROUTINES = """
SELECT p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
                  AND d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid)
"""

_TYPES = """
SELECT t.typtype, n.nspname, t.typname FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'c')
  AND (t.typtype <> 'c' OR c.relkind = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
                  AND d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = t.oid)
"""

_DROP_RELATION = {
    "r": "TABLE",
    "p": "TABLE",
    "f": "FOREIGN TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "S": "SEQUENCE",
}


def clear_statements(conn: psycopg.Connection[Any]) -> list[sql.Composed]:
    """The statements that drop every object of the service (all but the ledger).

    Schemas other than ``public`` (and the ledger) are dropped whole; in ``public``,
    relations, routines and types are dropped one by one, so the schema keeps its owner
    and privileges.
    """
    statements: list[sql.Composed] = []
    params = {"excluded": list(EXCLUDED_SCHEMAS)}
    for (name,) in conn.execute(_SCHEMAS_TO_DROP, params).fetchall():
        statements.append(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    for kind, schema, name in _relations(conn, "rpfvmS"):
        if schema != "public":
            continue
        statements.append(
            sql.SQL("DROP {} IF EXISTS {}.{} CASCADE").format(
                sql.SQL(_DROP_RELATION[kind]), sql.Identifier(schema), sql.Identifier(name)
            )
        )
    for (signature,) in conn.execute(_ROUTINES).fetchall():
        statements.append(sql.SQL("DROP ROUTINE IF EXISTS {} CASCADE").format(sql.SQL(signature)))
    for typtype, schema, name in conn.execute(_TYPES).fetchall():
        what = "DOMAIN" if typtype == "d" else "TYPE"
        statements.append(
            sql.SQL("DROP {} IF EXISTS {}.{} CASCADE").format(
                sql.SQL(what), sql.Identifier(schema), sql.Identifier(name)
            )
        )
    return statements


def _restore_args(jobs: int, *, clean: bool, owners: bool) -> list[str]:
    args = ["--exit-on-error", "--no-password"]
    args += [f"--exclude-schema={s}" for s in EXCLUDED_SCHEMAS]
    if clean:
        args += ["--clean", "--if-exists"]
    if not owners:
        args += ["--no-owner", "--no-privileges"]
    if jobs > 1:
        args.append(f"--jobs={jobs}")
    return args


def run_restore(
    settings: Settings,
    url: str,
    source: Path,
    *,
    clean: bool = True,
    owners: bool = True,
    purpose: str = "restore",
) -> tuple[PgTool, float]:
    """Run ``pg_restore`` of ``source`` into the database of ``url``; (tool, seconds)."""
    target = db.describe_target(db.check_url(url))
    with _connect(settings, url, f"{purpose} check") as conn:
        major, _version = _server_version(conn)
    tool = find_tool("pg_restore", major)
    libpq_url, env = libpq_target(url, f"{purpose} pg_restore")
    args = _restore_args(settings.raw.backup.jobs, clean=clean, owners=owners)
    run = ToolRun(tool, [*args, f"--dbname={libpq_url}", str(source)], env)
    try:
        return tool, run.wait(target)
    except BaseException:
        run.kill()
        raise


# Inside the restore's transaction: remember how far each sequence has gone, and after the
# restore move any sequence the set would rewind back to where it was (ids handed out
# before the restore are never handed out again). The sequences kept are printed as JSON
# after the marker line that tells releasegate that every statement has run.
_SEQUENCES_BEFORE = """
CREATE TEMPORARY TABLE rg_sequences_before ON COMMIT DROP AS
SELECT schemaname, sequencename, last_value FROM pg_catalog.pg_sequences
WHERE last_value IS NOT NULL AND schemaname NOT IN ({excluded});
"""
_SEQUENCES_AFTER = """
CREATE TEMPORARY TABLE rg_sequences_kept (name text, value bigint) ON COMMIT DROP;
DO $releasegate$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT pg_catalog.format('%I.%I', s.schemaname, s.sequencename) AS name,
           greatest(least(b.last_value, s.max_value), s.min_value) AS keep
    FROM pg_temp.rg_sequences_before b
    JOIN pg_catalog.pg_sequences s USING (schemaname, sequencename)
    WHERE (s.increment_by > 0 AND (s.last_value IS NULL OR s.last_value < b.last_value))
       OR (s.increment_by < 0 AND (s.last_value IS NULL OR s.last_value > b.last_value))
  LOOP
    PERFORM pg_catalog.setval(r.name::pg_catalog.regclass, r.keep, true);
    INSERT INTO pg_temp.rg_sequences_kept VALUES (r.name, r.keep);
  END LOOP;
END $releasegate$;
SELECT coalesce(pg_catalog.json_object_agg(name, value)::text, '{}') AS rg_kept
FROM pg_temp.rg_sequences_kept \\gset
\\echo releasegate-prepared
\\echo :rg_kept
"""
_PREPARED = b"releasegate-prepared"
_UNCHANGED = "the restore was rolled back, the database is unchanged"
_PSQL_PREFIX_RE = re.compile(r"^psql:[^:]*:\d+: (ERROR|FATAL):\s+")


def _restore_script(
    conn: psycopg.Connection[Any], drops: Sequence[sql.Composed], lock_timeout: float
) -> tuple[bytes, bytes]:
    """The SQL around the dump's own script, up to the point where only ``COMMIT`` is left:
    (preamble, epilogue)."""
    excluded = sql.SQL(", ").join(sql.Literal(s) for s in EXCLUDED_SCHEMAS)
    lines = [
        "BEGIN;",
        f"SET LOCAL lock_timeout = '{round(lock_timeout * 1000)}ms';",
        sql.SQL(_SEQUENCES_BEFORE).format(excluded=excluded).as_string(conn),
        *(f"{statement.as_string(conn)};" for statement in drops),
        "",
    ]
    return "\n".join(lines).encode(), _SEQUENCES_AFTER.encode()


def _psql_error(run: ToolRun, code: int, target: str) -> InfraError | CheckFailed:
    lines = [_PSQL_PREFIX_RE.sub("error: ", line) for line in run.tail]
    if any("lock timeout" in line for line in lines):
        return StateError(
            f"cannot restore Postgres {target}: its tables are in use (lock timeout); {_UNCHANGED}"
        )
    error = tool_error("psql", code, lines, target)
    return type(error)(f"{error}; {_UNCHANGED}")


class StagedRestore:
    """A Postgres restore prepared in ONE open transaction: only its ``COMMIT`` is left.

    ``pg_restore --file=-`` turns the dump into SQL, which is relayed to ``psql`` after a
    preamble (``BEGIN``, ``lock_timeout``, the sequences' positions, every ``DROP`` of
    :func:`clear_statements`) and before an epilogue (sequences never rewound, then a
    marker line ``psql`` prints once every statement has run). Building the object waits
    for that marker; :meth:`commit` sends ``COMMIT``. On any failure before it (a damaged
    dump, a lock held too long, a lost connection, :meth:`abort`, this process dying)
    ``psql`` is stopped or its input ends without ``COMMIT``, and the server rolls the
    transaction back: the database is exactly as it was. Meanwhile the transaction holds
    its locks: the service's queries on those tables wait. The price of one transaction:
    no ``-j`` parallelism for the restore.
    """

    store = STORE

    def __init__(self, settings: Settings, set_dir: Path, entry: StoreBackup, *, force: bool):
        self.settings = settings
        self.url = settings.postgres_url()
        source = dump_source(set_dir, entry)
        self.target = db.describe_target(
            db.check_url(self.url, f"${settings.raw.postgres.url_env}")
        )
        self.started = time.monotonic()
        with _connect(settings, self.url, "backup restore") as conn:
            major, _version = _server_version(conn)
            self.alembic_before = format_alembic(alembic_revisions(conn))
            if not force:
                refuse_non_empty(conn, self.target)
            self.drops = clear_statements(conn)
            preamble, epilogue = _restore_script(
                conn, self.drops, settings.raw.migrations.lock_timeout
            )
        dumper = find_tool("pg_restore", major)
        self.tool_version = dumper.version
        libpq_url, env = libpq_target(self.url, "restore psql")
        self.psql = ToolRun(
            find_tool("psql", major),
            [
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                f"--output={os.devnull}",
                "--file=-",
                f"--dbname={libpq_url}",
            ],
            env,
            pipe_in=True,
            pipe_out=True,
        )
        self.kept: dict[str, int] = {}
        try:
            self._prepare(dumper, env, source, preamble, epilogue)
        except BaseException:
            self.abort()
            raise

    def _prepare(
        self, dumper: PgTool, env: dict[str, str], source: Path, preamble: bytes, epilogue: bytes
    ) -> None:
        script = [*_restore_args(1, clean=False, owners=True), "--file=-", str(source)]
        dump = ToolRun(dumper, script, env, pipe_out=True)
        stdin, stdout = self.psql.proc.stdin, self.psql.proc.stdout
        assert stdin is not None and stdout is not None and dump.proc.stdout is not None
        try:
            stdin.write(preamble)
            while chunk := dump.proc.stdout.read(CHUNK):
                stdin.write(chunk)
            if (code := dump.finish()) != 0:
                error = tool_error(dumper.name, code, list(dump.tail), self.target)
                raise type(error)(f"{error}; {_UNCHANGED}")
            stdin.write(epilogue)
            stdin.flush()
        except BrokenPipeError:  # psql stopped at an error: its own message says which
            pass
        finally:
            dump.kill()
        lines = iter(stdout.readline, b"")
        if any(line.strip() == _PREPARED for line in lines):
            self.kept = {str(k): int(v) for k, v in json.loads(next(lines, b"{}")).items()}
            return
        raise _psql_error(self.psql, self.psql.finish(), self.target)

    def commit(self) -> dict[str, Any]:
        """Send ``COMMIT``; the restored figures. A failure leaves the database as it was."""
        stdin = self.psql.proc.stdin
        assert stdin is not None
        try:
            stdin.write(b"COMMIT;\n")
            stdin.close()
        except BrokenPipeError:
            pass
        if (code := self.psql.finish()) != 0:
            raise _psql_error(self.psql, code, self.target)
        timings = {"restore": time.monotonic() - self.started}
        with _connect(self.settings, self.url, "backup restore") as conn:
            step = time.monotonic()
            conn.execute("ANALYZE")
            timings["analyze"] = time.monotonic() - step
            step = time.monotonic()
            tables = count_rows(conn)
            after = format_alembic(alembic_revisions(conn))
            timings["counts"] = time.monotonic() - step
        return {
            "database": self.target,
            "dropped_objects": len(self.drops),
            "tables": tables,
            "rows": sum(tables.values()),
            "alembic_before": self.alembic_before,
            "alembic_after": after,
            "sequences_kept": self.kept,
            "pg_restore": self.tool_version,
            "seconds": round(time.monotonic() - self.started, 3),
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }

    def abort(self) -> None:
        """Stop ``psql`` before its ``COMMIT``: the server rolls everything back."""
        self.psql.kill()

    def undo(self) -> None:
        """A committed Postgres restore cannot be undone: commit it last."""
        raise RollbackFailed(f"the restore of Postgres {self.target} is committed already")

    def finish(self) -> None:
        """Nothing is kept for an undo."""


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
            with _connect(settings, scratch_url, "backup verify") as conn:
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
        _connect(settings, admin_url, "scratch") as admin,
    ):
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db.database_name(url)))
        )
