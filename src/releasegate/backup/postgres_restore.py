"""Restoring a Postgres dump: ``pg_restore``, or one transaction relayed to ``psql``.

A staged restore (:class:`StagedRestore`) drops every object of the service and loads
the dump in ONE transaction, ``COMMIT`` last, so a failure changes nothing; sequences are
never rewound. :func:`run_restore` loads a dump into a scratch database (verification).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from releasegate import db
from releasegate.backup.base import CHUNK, StoreBackup
from releasegate.backup.postgres_contents import (
    EXCLUDED_SCHEMAS,
    alembic_revisions,
    connect,
    count_rows,
    format_alembic,
    relations,
)
from releasegate.backup.postgres_files import STORE, dump_source
from releasegate.backup.postgres_tools import (
    PgTool,
    ToolRun,
    find_tool,
    libpq_target,
    read_server_version,
    tool_error,
)
from releasegate.config import Settings
from releasegate.errors import CheckFailed, InfraError, RollbackFailed, StateError


def occupied(conn: psycopg.Connection[Any]) -> list[str]:
    """Tables, views, sequences of the service in the database (the ledger excluded)."""
    return [f"{s}.{t}" for _k, s, t in relations(conn, "rpvmSf")]


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
    tables = [f"{s}.{t}" for _k, s, t in relations(conn, "rpf")]
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
    for kind, schema, name in relations(conn, "rpfvmS"):
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
    with connect(settings, url, f"{purpose} check") as conn:
        major, _version = read_server_version(conn)
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
        with connect(settings, self.url, "backup restore") as conn:
            major, _version = read_server_version(conn)
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
        with connect(self.settings, self.url, "backup restore") as conn:
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
