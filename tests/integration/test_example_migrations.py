"""The bundled example service's migrations (migrations/postgres) on a real database.

Alembic runs through its command API on a connection shared via
``Config.attributes["connection"]``, the way releasegate drives it.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = REPO_ROOT / "migrations" / "postgres" / "alembic.ini"
EXAMPLE_APP_DIR = REPO_ROOT / "examples" / "app"

# More users than one backfill batch (1000) so 0003 has to loop.
SEEDED_USERS = 2345


def _sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _example_metadata() -> sa.MetaData:
    if str(EXAMPLE_APP_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_APP_DIR))
    from notes_app.models import metadata

    return metadata


@pytest.fixture
def connection(pg_url: str) -> Iterator[Connection]:
    engine = sa.create_engine(_sqlalchemy_url(pg_url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _config(connection: Connection) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["connection"] = connection
    return config


def _seed_at_0002(connection: Connection) -> None:
    connection.execute(
        sa.text(
            "INSERT INTO users (email, full_name) "
            "SELECT 'User' || g || '@Example.COM', 'User Number ' || g "
            "FROM generate_series(1, :n) AS g"
        ),
        {"n": SEEDED_USERS},
    )
    connection.execute(
        sa.text("INSERT INTO users (email, full_name) VALUES ('already@lower.example', 'Lower')")
    )
    connection.execute(
        sa.text("INSERT INTO documents (owner_id, title) SELECT id, 'doc ' || id FROM users")
    )
    connection.execute(
        sa.text(
            "INSERT INTO document_chunks (document_id, ord, text, vector_id) "
            "SELECT d.id, o, 'chunk ' || o, gen_random_uuid() "
            "FROM documents AS d, generate_series(0, 2) AS o"
        )
    )
    # Hand the connection back to Alembic outside a transaction: the revisions with an
    # autocommit block (0003, 0004) cannot run inside the caller's transaction.
    connection.commit()


def _current(connection: Connection) -> str | None:
    revision = MigrationContext.configure(connection).get_current_revision()
    connection.rollback()
    return revision


def test_upgrade_head_backfills_and_normalises_seeded_rows(connection: Connection) -> None:
    config = _config(connection)
    command.upgrade(config, "0002")
    _seed_at_0002(connection)

    command.upgrade(config, "head")

    assert _current(connection) == "0006"
    assert not connection.in_transaction()
    users = connection.execute(
        sa.text(
            "SELECT count(*) AS total, "
            "count(*) FILTER (WHERE display_name IS NULL) AS no_display_name, "
            "count(*) FILTER (WHERE email <> lower(email)) AS mixed_case "
            "FROM users"
        )
    ).one()
    assert users.total == SEEDED_USERS + 1
    assert users.no_display_name == 0
    assert users.mixed_case == 0
    row = connection.execute(
        sa.text("SELECT email, display_name FROM users WHERE email = 'user7@example.com'")
    ).one()
    assert row.display_name == "User Number 7"
    columns = {c["name"] for c in sa.inspect(connection).get_columns("users")}
    assert "full_name" not in columns
    index_valid = connection.execute(
        sa.text(
            "SELECT i.indisvalid FROM pg_index AS i "
            "WHERE i.indexrelid = 'ix_document_chunks_vector_id'::regclass"
        )
    ).scalar_one()
    assert index_valid is True
    connection.rollback()


def test_models_match_schema_at_head(connection: Connection) -> None:
    command.upgrade(_config(connection), "head")

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    assert compare_metadata(context, _example_metadata()) == []
    connection.rollback()


def test_contract_downgrade_restores_full_name_and_data_revision_refuses(
    connection: Connection,
) -> None:
    config = _config(connection)
    command.upgrade(config, "0002")
    _seed_at_0002(connection)
    command.upgrade(config, "head")

    command.downgrade(config, "0005")

    full_name = next(
        c for c in sa.inspect(connection).get_columns("users") if c["name"] == "full_name"
    )
    assert full_name["nullable"] is False
    mismatched = connection.execute(
        sa.text("SELECT count(*) FROM users WHERE full_name IS DISTINCT FROM display_name")
    ).scalar_one()
    assert mismatched == 0
    connection.rollback()

    with pytest.raises(NotImplementedError, match="cannot be restored"):
        command.downgrade(config, "0004")
    connection.rollback()
    assert _current(connection) == "0005"


def test_offline_sql_needs_no_database() -> None:
    buffer = io.StringIO()
    config = Config(str(ALEMBIC_INI), output_buffer=buffer)
    config.set_main_option("sqlalchemy.url", "")
    config.attributes["configure_logger"] = False

    command.upgrade(config, "0002:0004", sql=True)

    sql = buffer.getvalue()
    assert "UPDATE users SET display_name = full_name WHERE display_name IS NULL;" in sql
    assert "DROP INDEX CONCURRENTLY IF EXISTS ix_document_chunks_vector_id;" in sql
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_document_chunks_vector_id" in sql
