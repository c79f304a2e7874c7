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
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from releasegate.config import Settings
from releasegate.config_files import refuse_bom
from releasegate.errors import ConfigError, InfraError, MigrationScriptError
from releasegate.ledger.schema import LEDGER_SCHEMA

OFFLINE_URL = "postgresql+psycopg://"
CONFIG_IRREVERSIBLE = "declared irreversible in migrations.irreversible"
SHARED_CONNECTION_FIX = (
    "in env.py, run on config.attributes['connection'] when it is set"
    " (Alembic's 'sharing a connection' recipe)"
)
_RELATIVE_RE = re.compile(r"^-([1-9][0-9]*)$")

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
    # downgrade() does nothing (``pass``) while upgrade() does something: undoing the
    # revision only moves alembic_version and leaves the upgrade's work in place.
    noop_downgrade: bool = False
    # Declared in migrations.irreversible: downgrade_one refuses it without running it.
    irreversible_by_config: bool = False

    @property
    def irreversible(self) -> bool:
        return self.irreversible_reason is not None


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


@dataclass(frozen=True)
class _SourceFacts:
    irreversible_reason: str | None = None
    noop_downgrade: bool = False


def _body(tree: ast.Module, name: str) -> list[ast.stmt] | None:
    """The statements of top-level function ``name``, docstring left out."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return [stmt for stmt in node.body if not _is_docstring(stmt)]
    return None


def _does_nothing(body: list[ast.stmt]) -> bool:
    """Only ``pass`` (or ``...``) statements."""
    return all(
        isinstance(stmt, ast.Pass)
        or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
        for stmt in body
    )


def _raises_not_implemented(body: list[ast.stmt]) -> str | None:
    """The message of a ``raise NotImplementedError(...)`` that opens ``body``."""
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


def _source_facts(path: Path) -> _SourceFacts:
    """What the source of a revision declares about its downgrade, without running it.

    Declared irreversibility and no-op downgrades are read from the source, so plans and
    reports can name them without a database.
    """
    try:
        source = path.read_text(encoding="utf-8-sig")  # Python accepts a BOM; so do we
        with _AST_PARSE_LOCK:
            tree = ast.parse(source)
    except (OSError, SyntaxError):
        return _SourceFacts()
    downgrade = _body(tree, "downgrade")
    if downgrade is None:
        return _SourceFacts()
    upgrade = _body(tree, "upgrade")
    return _SourceFacts(
        irreversible_reason=_raises_not_implemented(downgrade),
        noop_downgrade=_does_nothing(downgrade) and not _does_nothing(upgrade or []),
    )


@dataclass(frozen=True)
class TypeChange:
    """One ``alter_column`` with a new type, as Alembic rendered it offline."""

    sql: str  # what the call emitted
    old_type: str | None  # ``existing_type`` compiled for Postgres; None when not given
    new_type: str
    has_using: bool


@dataclass(frozen=True)
class OfflineSql:
    """A revision rendered as SQL, with what its ``alter_column`` calls said."""

    text: str
    type_changes: list[TypeChange] = field(default_factory=list)


def _compiled(type_: Any, dialect: Any) -> str | None:
    if type_ is None:
        return None
    try:
        return str(type_.compile(dialect=dialect))
    except Exception:  # a custom type that cannot compile offline: unknown
        return None


def _record_type_changes(
    context: MigrationContext, buffer: io.StringIO, changes: list[TypeChange]
) -> None:
    """Wrap the offline context's ``alter_column`` to record every type change in ``changes``.

    The SQL alone cannot tell a widening (``varchar(250)`` to ``varchar(5000)``) from a
    rewrite; ``existing_type``, which only the call sees, can.
    """
    impl = context.impl
    original = impl.alter_column

    def alter_column(*args: Any, **kw: Any) -> Any:
        start = len(buffer.getvalue())
        result = original(*args, **kw)
        new = _compiled(kw.get("type_"), context.dialect)
        if new is not None:
            changes.append(
                TypeChange(
                    sql=buffer.getvalue()[start:],
                    old_type=_compiled(kw.get("existing_type"), context.dialect),
                    new_type=new,
                    has_using=kw.get("postgresql_using") is not None,
                )
            )
        return result

    impl.alter_column = alter_column  # type: ignore[method-assign]


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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
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
        self._refuse_duplicates(caught)
        declared = self._config_irreversible({str(script.revision) for script in scripts})
        revisions = {}
        for script in scripts:
            facts = _source_facts(Path(script.path))
            by_config = script.revision in declared
            reason = facts.irreversible_reason or (CONFIG_IRREVERSIBLE if by_config else None)
            revisions[script.revision] = Revision(
                id=script.revision,
                down=_as_tuple(script.down_revision),
                doc=_first_doc_line(script),
                path=Path(script.path),
                phase_override=getattr(script.module, "releasegate_phase", None),
                irreversible_reason=reason,
                noop_downgrade=facts.noop_downgrade,
                irreversible_by_config=by_config,
            )
        return revisions

    def _refuse_duplicates(self, caught: list[warnings.WarningMessage]) -> None:
        """Alembic only warns about two files with one revision id, then keeps either."""
        for warning in caught:
            match = re.fullmatch(r"Revision (\S+) is present more than once", str(warning.message))
            if match is None:
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )
                continue
            rev_id = match.group(1)
            files = sorted(
                Path(s.path).name for s in self.script._load_revisions() if s.revision == rev_id
            )
            raise MigrationScriptError(
                f"revision id {rev_id} is used by {len(files)} files"
                f" ({', '.join(files)}): give each revision its own id"
            )

    def _config_irreversible(self, known: set[str]) -> set[str]:
        """The revisions named in ``migrations.irreversible`` (full ids or unique prefixes)."""
        declared = set()
        for name in self.settings.raw.migrations.irreversible:
            matches = {rev for rev in known if rev == name} or {
                rev for rev in known if rev.startswith(name)
            }
            if len(matches) != 1:
                what = "no revision" if not matches else f"{len(matches)} revisions"
                raise ConfigError(f"migrations.irreversible: {name!r} matches {what}")
            declared |= matches
        return declared

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

    def relative_downgrade_target(self, current: tuple[str, ...], target: str) -> str | None:
        """The revision ``-N`` names from ``current`` (as ``alembic downgrade -N``).

        ``None`` when ``target`` is not relative.
        """
        match = _RELATIVE_RE.match(target)
        if match is None:
            return None
        steps = int(match.group(1))
        if len(current) > 1:
            raise ConfigError(
                f"{target} is ambiguous: the database is at {len(current)} revisions"
                f" ({', '.join(current)}); name the target revision"
            )
        applied = self.downgrade_path(current, "base") or []
        if steps > len(applied):
            raise ConfigError(
                f"cannot go down {steps} revision(s): only {len(applied)} applied"
                " (use 'base' to undo them all)"
            )
        if steps == len(applied):
            return "base"
        below = applied[steps - 1].down
        if len(below) != 1:
            raise ConfigError(
                f"{target} would stop below the merge point {applied[steps - 1].id}:"
                " name the target revision"
            )
        return below[0]

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

    def unapplied(self, current: tuple[str, ...]) -> list[Revision]:
        """Every revision that is neither ``current`` nor below it, oldest first.

        Unlike :meth:`upgrade_path`, this also works with several heads.
        """
        applied = (
            {s.revision for s in self.script.iterate_revisions(current, "base")}
            if current
            else set()
        )
        ordered = reversed(list(self.script.walk_revisions()))
        return [self.revisions[s.revision] for s in ordered if s.revision not in applied]

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

    def require_shared_connection(self, connection: Connection) -> None:
        """Refuse an ``env.py`` that runs revisions on a connection of its own.

        Runs ``env.py`` once with nothing to do, and compares the backend pid of the
        connection it configured with ours: on any other connection the session's
        ``lock_timeout``, ``statement_timeout`` and the lock-timeout retries would
        silently not apply.
        """
        ours = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        connection.rollback()
        used: list[object] = []

        def probe(_heads: object, ctx: MigrationContext) -> list[Any]:
            bind = ctx.connection
            if bind is connection or bind is None:
                used.append(ours if bind is connection else None)
            else:
                used.append(bind.exec_driver_sql("SELECT pg_backend_pid()").scalar())
            return []

        self.config.attributes["connection"] = connection
        try:
            self._run_env(probe, dont_mutate=True)
        finally:
            self.config.attributes.pop("connection", None)
            connection.rollback()
        if used and used[0] != ours:
            raise MigrationScriptError(
                "env.py runs migrations on a connection of its own, so lock_timeout,"
                f" statement_timeout and retries would not apply: {SHARED_CONNECTION_FIX}"
            )

    def stamp(self, connection: Connection, rev: Revision) -> None:
        """Set the version table to ``rev`` without running anything (``alembic stamp``)."""
        MigrationContext.configure(connection).stamp(self.script, rev.id)
        connection.commit()

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
        """Undo exactly one revision on ``connection``.

        A revision named in ``migrations.irreversible`` raises ``NotImplementedError``
        without running, as a ``downgrade()`` that declares itself irreversible does.
        """
        if rev.irreversible_by_config:
            raise NotImplementedError(CONFIG_IRREVERSIBLE)
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

    def offline_sql(self, rev: Revision) -> OfflineSql:
        """The SQL that applying ``rev`` on top of its parent emits, rendered without a database.

        A revision that queries its connection (``op.get_bind()``) cannot be rendered:
        whatever it raises then comes out of here.
        """
        buffer = io.StringIO()
        starting = rev.down[0] if len(rev.down) == 1 else None
        changes: list[TypeChange] = []

        def steps(heads: Any, ctx: MigrationContext) -> Any:
            _record_type_changes(ctx, buffer, changes)
            return self.script._upgrade_revs(rev.id, heads)

        self._run_env(
            steps,
            as_sql=True,
            starting_rev=starting,
            destination_rev=rev.id,
            output_buffer=buffer,
        )
        return OfflineSql(buffer.getvalue(), changes)


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
