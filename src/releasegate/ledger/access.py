"""A ledger the releasing role cannot rewrite: a separate role owns it.

In the single-role setup the releasing role creates and so owns the ``releasegate``
schema: the append-only trigger stops its mistakes, not its intent (an owner may drop
the trigger, ``TRUNCATE`` or rewrite rows). :func:`setup_owned_ledger`, run with the
owner's connection, creates or upgrades the schema as the owner and leaves the releasing
role only what releasegate needs:

- ``USAGE`` on the schema (no ``CREATE``), and on its sequences;
- ``SELECT`` on ``schema_version``;
- ``SELECT, INSERT`` on ``releases`` and ``events``;
- ``UPDATE`` of the columns a running release fills in later (:data:`UPDATABLE_COLUMNS`).

Ownership is what ``ALTER``, ``DROP``, ``TRUNCATE`` and disabling a trigger require, so
the releasing role can do none of them; without ``UPDATE``/``DELETE`` on ``events`` its
step log cannot change either. Running it again is harmless: the privileges are reset
to exactly these, and newer ledger versions are applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from releasegate import db
from releasegate.errors import ConfigError
from releasegate.ledger.schema import LEDGER_SCHEMA
from releasegate.ledger.store import Ledger

# What finish_release, update_release, merge_summary and set_outcome write.
UPDATABLE_COLUMNS = (
    "git_sha",
    "image_ref",
    "image_digest",
    "finished_at",
    "outcome",
    "alembic_before",
    "alembic_after",
    "redis_before",
    "redis_after",
    "qdrant_before",
    "qdrant_after",
    "summary",
)


@dataclass(frozen=True)
class OwnedLedger:
    """What :func:`setup_owned_ledger` did."""

    owner: str
    releaser: str
    versions_applied: int
    statements: list[str]

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def grant_statements(releaser: str) -> list[sql.Composed]:
    """Statements that leave ``releaser`` exactly the privileges listed in the module docs."""
    schema = sql.Identifier(LEDGER_SCHEMA)
    role = sql.Identifier(releaser)

    def table(name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(schema, sql.Identifier(name))

    columns = sql.SQL(", ").join(sql.Identifier(c) for c in UPDATABLE_COLUMNS)
    tables = sql.SQL(", ").join(table(t) for t in ("releases", "events", "schema_version"))
    return [
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC, {}").format(schema, role),
        # Revoking a table privilege revokes its column privileges too.
        sql.SQL("REVOKE ALL ON {} FROM PUBLIC, {}").format(tables, role),
        sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM PUBLIC, {}").format(schema, role),
        sql.SQL("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {} FROM PUBLIC, {}").format(schema, role),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role),
        sql.SQL("GRANT SELECT ON {} TO {}").format(table("schema_version"), role),
        sql.SQL("GRANT SELECT, INSERT ON {}, {} TO {}").format(
            table("releases"), table("events"), role
        ),
        sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(columns, table("releases"), role),
        sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, role),
    ]


def _check_roles(conn: psycopg.Connection[Any], releaser: str) -> str:
    row = conn.execute(
        "SELECT current_user::text, r.rolsuper, pg_has_role(r.rolname, current_user, 'USAGE')"
        " FROM pg_roles r WHERE r.rolname = %s",
        (releaser,),
    ).fetchone()
    if row is None:
        raise ConfigError(f"the releasing role '{releaser}' does not exist")
    owner, releaser_is_superuser, acts_as_owner = str(row[0]), bool(row[1]), bool(row[2])
    if releaser == owner or acts_as_owner:
        raise ConfigError(
            f"the releasing role '{releaser}' is or acts as the owner '{owner}':"
            " connect with a separate owner role"
        )
    if releaser_is_superuser:
        raise ConfigError(f"the releasing role '{releaser}' is a superuser: no privilege binds it")
    return owner


def setup_owned_ledger(owner_url: str, releaser: str) -> OwnedLedger:
    """Create or upgrade the ledger as the role of ``owner_url``; restrict ``releaser``.

    Refuses (:class:`ConfigError`) when the releasing role is missing, is the owner, is a
    member of it or is a superuser, and when the schema already belongs to a role the
    owner cannot act as (transfer it first: ``ALTER SCHEMA ... OWNER TO``, with its
    tables and function, as a superuser).
    """
    conn = db.connect(owner_url, "ledger setup")
    try:
        owner = _check_roles(conn, releaser)
        ledger = Ledger(conn)
        current = ledger.schema_owner()
        if current is not None and not current[1]:
            raise ConfigError(
                f"the ledger schema '{LEDGER_SCHEMA}' belongs to role {current[0]}, not to"
                f" {owner}: transfer the schema, its tables and its function to {owner} first"
            )
        applied = ledger.ensure_schema()
        statements = grant_statements(releaser)
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
        return OwnedLedger(owner, releaser, applied, [s.as_string(conn) for s in statements])
    finally:
        conn.close()
