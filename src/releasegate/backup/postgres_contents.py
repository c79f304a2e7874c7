"""What a Postgres database holds of the service: its relations, rows, revision and schema.

The ledger schema is never part of it (:data:`EXCLUDED_SCHEMAS`), nor are the members of
an extension.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from releasegate import db
from releasegate.config import Settings
from releasegate.ledger.schema import LEDGER_SCHEMA
from releasegate.migrations import schema as schema_snapshot

EXCLUDED_SCHEMAS: tuple[str, ...] = (LEDGER_SCHEMA,)


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


def relations(conn: psycopg.Connection[Any], kinds: str) -> list[tuple[str, str, str]]:
    """The service's relations of the given ``relkind`` letters: (kind, schema, name)."""
    rows = conn.execute(
        _RELATIONS, {"excluded": list(EXCLUDED_SCHEMAS), "kinds": list(kinds)}
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def count_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact rows of every table of the service (``schema.table`` -> rows), ledger excluded.

    Partitions are counted, partitioned parents are not (their rows are the partitions').
    """
    counted: dict[str, int] = {}
    for _kind, schema, table in relations(conn, "r"):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        counted[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counted


def alembic_revisions(conn: psycopg.Connection[Any]) -> tuple[str, ...] | None:
    """The revisions in ``alembic_version`` (``public`` first); None when there is none."""
    rel = [(s, t) for _k, s, t in relations(conn, "rp") if t == "alembic_version"]
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


def database_sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Bytes of the whole database and of the service's tables (no indexes, no ledger)."""
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


def connect(settings: Settings, url: str, purpose: str) -> psycopg.Connection[Any]:
    """A connection to ``url`` for ``purpose`` with the configured connect timeout."""
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    return db.connect(url, purpose, connect_timeout=settings.raw.postgres.connect_timeout)
