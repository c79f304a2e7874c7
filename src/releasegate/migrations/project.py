"""The user's Alembic project: loading it safely and running it one revision at a time.

releasegate drives Alembic through its ``EnvironmentContext`` (as ``alembic.command``
does) but one revision per run of ``env.py``: each revision then commits on its own, a
failure leaves the database at the last good revision, and every revision gets its own
duration in the ledger. The open connection is handed to ``env.py`` through
``config.attributes["connection"]`` (Alembic's "sharing a connection" recipe), which is
how releasegate applies its session settings (lock and statement timeouts) to it.
"""

from __future__ import annotations

import ast
import io
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RangeNotAncestorError
from alembic.util import CommandError
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from releasegate import db
from releasegate.config import Settings, refuse_bom
from releasegate.errors import ConfigError, InfraError, MigrationScriptError
from releasegate.ledger.schema import LEDGER_SCHEMA

OFFLINE_URL = "postgresql+psycopg://"

# CPython 3.11 keeps ast.parse's recursion depth per interpreter, not per thread:
# two threads parsing at once can fail with "SystemError: AST constructor recursion
# depth mismatch" (python/cpython#106905). Projects loaded from threads parse in turn.
_AST_PARSE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Revision:
    """What releasegate needs to know about one revision file."""

    id: str
    down: tuple[str, ...]
    doc: str
    path: Path
    phase_override: object
    irreversible_reason: str | None

    @property
    def irreversible(self) -> bool:
        return self.irreversible_reason is not None


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


def _irreversible_reason(path: Path) -> str | None:
    """The message of a ``raise NotImplementedError(...)`` that opens ``downgrade()``.

    Declared irreversibility is read from the source, so plans and reports can name it
    without running anything.
    """
    try:
        source = path.read_text(encoding="utf-8-sig")  # Python accepts a BOM; so do we
        with _AST_PARSE_LOCK:
            tree = ast.parse(source)
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name == "downgrade"):
            continue
        body = [stmt for stmt in node.body if not _is_docstring(stmt)]
        first = body[0] if body else None
        if not (isinstance(first, ast.Raise) and first.exc is not None):
            return None
        exc = first.exc
        name = exc.func if isinstance(exc, ast.Call) else exc
        if not (isinstance(name, ast.Name) and name.id == "NotImplementedError"):
            return None
        if isinstance(exc, ast.Call) and exc.args and isinstance(exc.args[0], ast.Constant):
            return str(exc.args[0].value)
        return "downgrade raises NotImplementedError"
    return None


def _as_tuple(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _first_doc_line(script: Script) -> str:
    lines = (script.doc or "").strip().splitlines()
    return lines[0] if lines else ""


class AlembicProject:
    """A loaded migrations folder plus the means to run it against one database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.migrations_dir
        if not (self.directory / "env.py").is_file():
            raise MigrationScriptError(
                f"migrations folder not found: {self.directory} has no env.py"
                " (migrations.postgres in the config)"
            )
        for extra in [settings.root, *settings.python_path]:
            if str(extra) not in sys.path:
                sys.path.insert(0, str(extra))
        ini = settings.raw.migrations.alembic_ini
        ini_path = settings.resolve_path(ini) if ini else self.directory / "alembic.ini"
        if ini and not ini_path.is_file():
            raise MigrationScriptError(f"alembic.ini not found: {ini_path}")
        if ini_path.is_file():
            refuse_bom(ini_path.read_text(encoding="utf-8", errors="replace"), ini_path.name)
        self.config = AlembicConfig(str(ini_path) if ini_path.is_file() else None)
        self.config.set_main_option("script_location", str(self.directory))
        # env.py reads this only when no connection is shared (offline rendering).
        self.config.set_main_option("sqlalchemy.url", OFFLINE_URL)
        self.script = ScriptDirectory.from_config(self.config)
        self.revisions = self._load_revisions()

    def _load_revisions(self) -> dict[str, Revision]:
        try:
            scripts = list(self.script.walk_revisions())
        except SyntaxError as exc:
            where = Path(exc.filename or "?").name
            raise MigrationScriptError(
                f"revision file {where} has a syntax error at line {exc.lineno}: {exc.msg}"
            ) from None
        except CommandError as exc:
            raise MigrationScriptError(f"cannot load migrations: {db.first_line(exc)}") from None
        except Exception as exc:  # a revision module failing at import time
            raise MigrationScriptError(
                f"cannot load migrations: {type(exc).__name__}: {db.first_line(exc)}"
            ) from None
        return {
            script.revision: Revision(
                id=script.revision,
                down=_as_tuple(script.down_revision),
                doc=_first_doc_line(script),
                path=Path(script.path),
                phase_override=getattr(script.module, "releasegate_phase", None),
                irreversible_reason=_irreversible_reason(Path(script.path)),
            )
            for script in scripts
        }

    # -- the revision graph ------------------------------------------------------------

    def heads(self) -> tuple[str, ...]:
        return tuple(self.script.get_heads())

    def knows(self, rev: str) -> bool:
        return rev in self.revisions

    def resolve(self, rev: str) -> str:
        """A full revision id from an id, a unique prefix, ``head`` or ``base``."""
        if rev in ("base", "head", "heads") or rev in self.revisions:
            return rev
        try:
            script = self.script.get_revision(rev)
        except CommandError as exc:
            raise ConfigError(f"unknown revision {rev!r}: {db.first_line(exc)}") from None
        if script is None:
            raise ConfigError(f"unknown revision {rev!r}")
        return str(script.revision)

    def upgrade_path(self, current: tuple[str, ...], target: str) -> list[Revision] | None:
        """Revisions to apply, oldest first, from ``current`` up to ``target``.

        ``None`` when ``target`` is not above ``current``.
        """
        lower: str | tuple[str, ...] = current or "base"
        try:
            scripts = list(self.script.iterate_revisions(target, lower))
        except RangeNotAncestorError:
            return None
        return [self.revisions[s.revision] for s in reversed(scripts)]

    def downgrade_path(self, current: tuple[str, ...], target: str) -> list[Revision] | None:
        """Revisions to undo, newest first, from ``current`` down to ``target``.

        ``None`` when ``target`` is not below ``current``.
        """
        if not current:
            return [] if target == "base" else None
        try:
            scripts = list(self.script.iterate_revisions(current, target))
        except RangeNotAncestorError:
            return None
        return [self.revisions[s.revision] for s in scripts]

    # -- running -----------------------------------------------------------------------

    def _run_env(self, fn: Any, **opts: Any) -> None:
        with EnvironmentContext(self.config, self.script, fn=fn, **opts):
            self.script.run_env()

    def upgrade_one(self, connection: Connection, rev: Revision) -> None:
        """Apply exactly one revision on ``connection`` (handed over outside a transaction)."""
        self.config.attributes["connection"] = connection
        try:
            self._run_env(
                lambda heads, _ctx: self.script._upgrade_revs(rev.id, heads),
                destination_rev=rev.id,
            )
            _end_open_transaction(connection)
        finally:
            self.config.attributes.pop("connection", None)

    def downgrade_one(self, connection: Connection, rev: Revision) -> None:
        """Undo exactly one revision on ``connection``."""
        if not rev.down:
            destination = "base"
        elif len(rev.down) == 1:
            destination = rev.down[0]
        else:  # a merge point: one step down along the graph
            destination = f"{rev.id}-1"
        self.config.attributes["connection"] = connection
        try:
            self._run_env(
                lambda heads, _ctx: self.script._downgrade_revs(destination, heads),
                destination_rev=destination,
            )
            _end_open_transaction(connection)
        finally:
            self.config.attributes.pop("connection", None)

    def offline_sql(self, rev: Revision) -> str:
        """The SQL that applying ``rev`` on top of its parent emits, rendered without a database."""
        buffer = io.StringIO()
        starting = rev.down[0] if len(rev.down) == 1 else None
        self._run_env(
            lambda heads, _ctx: self.script._upgrade_revs(rev.id, heads),
            as_sql=True,
            starting_rev=starting,
            destination_rev=rev.id,
            output_buffer=buffer,
        )
        return buffer.getvalue()


def _end_open_transaction(connection: Connection) -> None:
    """Commit what a successful step left open (e.g. a no-op step's reads).

    The next step must again be handed over outside a transaction.
    """
    if connection.in_transaction():
        connection.commit()


def current_revisions(connection: Connection) -> tuple[str, ...] | None:
    """The database's revisions; ``None`` when it was never migrated (no version table)."""
    try:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return tuple(MigrationContext.configure(connection).get_current_heads())
    finally:
        connection.rollback()


def _keep_ledger_off_search_path(connection: Connection) -> None:
    """Drop the ledger schema from the session's search_path.

    The default path starts with ``"$user"``: for a role named like the ledger schema,
    migrations would otherwise create the service's tables inside the ledger.
    """
    row = connection.exec_driver_sql("SELECT current_setting('search_path'), current_user").one()
    entries = [e.strip() for e in str(row[0]).split(",") if e.strip()]
    kept = [
        e
        for e in entries
        if e.strip('"') != LEDGER_SCHEMA and not (e == '"$user"' and row[1] == LEDGER_SCHEMA)
    ]
    if kept != entries:
        path = ", ".join(kept) or "public"
        connection.exec_driver_sql(f"SELECT set_config('search_path', '{path}', false)")


@contextmanager
def sqlalchemy_connection(
    url: str,
    purpose: str,
    *,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    connect_timeout: float = 5.0,
) -> Iterator[Connection]:
    """A SQLAlchemy connection with releasegate's session settings, outside a transaction."""
    engine = create_engine(
        db.sqlalchemy_url(url),
        poolclass=NullPool,
        connect_args={
            "application_name": db.application_name(purpose),
            "connect_timeout": max(1, round(connect_timeout)),
        },
    )
    try:
        try:
            connection = engine.connect()
        except OperationalError as exc:
            reason = db.first_line(exc.orig if exc.orig is not None else exc)
            raise InfraError(
                f"cannot reach Postgres at {db.describe_target(url)}: {reason}"
            ) from None
        with connection:
            if lock_timeout is not None:
                connection.exec_driver_sql(f"SET lock_timeout = '{round(lock_timeout * 1000)}ms'")
            if statement_timeout is not None:
                connection.exec_driver_sql(
                    f"SET statement_timeout = '{round(statement_timeout * 1000)}ms'"
                )
            _keep_ledger_off_search_path(connection)
            connection.commit()
            yield connection
    finally:
        engine.dispose()
