"""Alembic environment of the "bookmarks" service.

Where the database comes from, in order:

1. ``config.attributes["connection"]``: an open SQLAlchemy ``Connection`` handed over by
   the caller (the Alembic cookbook "sharing a connection" pattern). It is used as is:
   never closed here, and never committed beyond what ``context.begin_transaction()``
   does. Hand it over *outside* a transaction (commit first): Alembic then runs one
   transaction per revision, which the revisions using ``autocommit_block()`` need.
2. ``-x url=...`` on the alembic command line.
3. ``sqlalchemy.url`` in alembic.ini (empty by default).
4. The ``DATABASE_URL`` environment variable.

A plain ``postgresql://`` or ``postgres://`` URL is given the psycopg 3 driver.

Offline mode (``--sql``) works without a database: with no URL at all, SQL is rendered
for the PostgreSQL dialect.
"""

from __future__ import annotations

import os
import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

# The application's models live in <repo>/app/bookmarks_app (releasegate also puts app/
# on sys.path: migrations.python_path; this line is for plain `alembic` runs).
_APP_DIR = Path(__file__).resolve().parents[2] / "app"
if str(_APP_DIR) not in sys.path:
    sys.path.insert(0, str(_APP_DIR))

from bookmarks_app.models import metadata  # noqa: E402

config = context.config
shared_connection: Connection | None = config.attributes.get("connection")

# A caller that shares its connection is an application with its own logging: leave
# that alone unless it asks otherwise. Never disable loggers that already exist.
if config.config_file_name is not None and config.attributes.get(
    "configure_logger", shared_connection is None
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata

URL_ENV_VAR = "DATABASE_URL"
OFFLINE_FALLBACK_URL = "postgresql+psycopg://"


def _with_psycopg_driver(url: str) -> str:
    """Give a bare postgres URL the psycopg 3 driver; leave explicit drivers alone."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def database_url() -> str | None:
    """The configured database URL, or None when none is configured anywhere."""
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get(URL_ENV_VAR)
    )
    return _with_psycopg_driver(url) if url else None


def _configure_options() -> dict[str, object]:
    return {
        "target_metadata": target_metadata,
        "transaction_per_migration": True,
        "compare_type": True,
        "compare_server_default": True,
    }


def run_migrations_offline() -> None:
    """Render the migrations as SQL (``--sql``), without a database connection."""
    context.configure(
        url=database_url() or OFFLINE_FALLBACK_URL,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    context.configure(connection=connection, **_configure_options())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the shared connection, or on one of our own."""
    if shared_connection is not None:
        if shared_connection.in_transaction():
            # Alembic would run everything inside the caller's transaction instead of
            # one transaction per revision.
            raise RuntimeError(
                "the connection in Config.attributes['connection'] is inside a "
                "transaction: commit or roll back before running migrations (session "
                "state such as SET lock_timeout or session advisory locks survives that)"
            )
        _run_on(shared_connection)
        return

    url = database_url()
    if not url:
        raise RuntimeError(
            "no database URL: set sqlalchemy.url, pass -x url=..., set "
            f"{URL_ENV_VAR}, or share a connection via Config.attributes['connection']"
        )
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
