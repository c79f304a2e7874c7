"""Drift: the differences between a database and the service's SQLAlchemy metadata.

Alembic's autogenerate compares them and returns tuples of SQLAlchemy objects, whose
``repr`` carries memory addresses. Each difference is described here as one line that
names the object, says which side has it, and reads the same from run to run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

__all__ = ["describe_differences", "drift"]

IN_METADATA = "in the metadata, not in the database"
IN_DATABASE = "in the database, not in the metadata"

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _qualified(schema: str | None, *names: str | None) -> str:
    return ".".join(str(n) for n in (schema, *names) if n)


def _type(type_: Any) -> str:
    if type_ is None:
        return "none"
    try:
        return str(type_.compile(dialect=_DIALECT))
    except Exception:  # a type only its own dialect can compile
        return type(type_).__name__


def _default(value: Any) -> str:
    """A server default as SQL text: reflected ones are strings, declared ones clauses."""
    if value is None:
        return "none"
    arg = getattr(value, "arg", value)
    text = getattr(arg, "text", arg)
    return str(text)


def _columns(items: Iterable[Any]) -> str:
    return ", ".join(str(getattr(item, "name", item)) for item in items)


def _table_of(obj: Any) -> str:
    table = getattr(obj, "table", None)
    return str(getattr(table, "fullname", "?"))


def _constraint(obj: Any) -> str:
    """``unique constraint uq_x on public.t (a, b)``, ``foreign key ... -> u (id)``."""
    name = getattr(obj, "name", None) or "(unnamed)"
    kind = type(obj).__name__
    if kind == "ForeignKeyConstraint":
        elements = list(getattr(obj, "elements", []))
        target = elements[0].target_fullname.rsplit(".", 1)[0] if elements else "?"
        referred = ", ".join(e.target_fullname.rsplit(".", 1)[-1] for e in elements)
        local = ", ".join(str(key) for key in getattr(obj, "column_keys", []))
        return f"foreign key {name} on {_table_of(obj)} ({local}) -> {target} ({referred})"
    if kind == "Index":
        columns = [*getattr(obj, "expressions", [])] or [*obj.columns]
        unique = "unique " if getattr(obj, "unique", False) else ""
        return f"{unique}index {name} on {_table_of(obj)} ({_columns(columns)})"
    words = {
        "UniqueConstraint": "unique constraint",
        "CheckConstraint": "check constraint",
        "PrimaryKeyConstraint": "primary key",
    }
    return f"{words.get(kind, kind)} {name} on {_table_of(obj)} ({_columns(obj.columns)})"


def _modification(item: tuple[Any, ...]) -> str:
    kind, schema, table, column, _existing, old, new = item
    where = f"column {_qualified(schema, table, column)}"
    if kind == "modify_type":
        return f"{where} type: database {_type(old)}, metadata {_type(new)}"
    if kind == "modify_nullable":
        before, after = ("NULL" if v else "NOT NULL" for v in (old, new))
        return f"{where} nullability: database {before}, metadata {after}"
    if kind == "modify_default":
        return f"{where} server default: database {_default(old)}, metadata {_default(new)}"
    if kind == "modify_comment":
        return f"{where} comment: database {old!r}, metadata {new!r}"
    return f"{where} {kind.removeprefix('modify_')}: database {old!r}, metadata {new!r}"


def _describe(item: Any) -> list[str]:
    if isinstance(item, list):  # the modifications of one column
        return [line for sub in item for line in _describe(sub)]
    kind = item[0]
    side = IN_METADATA if kind.startswith("add_") else IN_DATABASE
    if kind.startswith("modify_"):
        return [_modification(item)]
    if kind in ("add_table", "remove_table"):
        return [f"table {item[1].fullname}: {side}"]
    if kind in ("add_column", "remove_column"):
        _, schema, table, column = item
        where = _qualified(schema, table, column.name)
        return [f"column {where} ({_type(column.type)}): {side}"]
    if kind in ("add_table_comment", "remove_table_comment"):
        return [f"comment on table {item[1].fullname}: {side}"]
    if len(item) == 2:  # indexes and constraints
        return [f"{_constraint(item[1])}: {side}"]
    return [f"{kind}: {', '.join(str(getattr(x, 'name', x)) for x in item[1:])}"]


def describe_differences(differences: Iterable[Any]) -> list[str]:
    """One line per autogenerate difference, sorted so reruns compare equal."""
    return sorted(line for item in differences for line in _describe(item))


def drift(connection: Connection, metadata: MetaData) -> list[str]:
    """Differences between the database and the metadata, as autogenerate sees them."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    try:
        return describe_differences(compare_metadata(context, metadata))
    finally:
        connection.rollback()
