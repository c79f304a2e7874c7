"""Schema snapshots of a Postgres database, and the differences between two of them.

A snapshot maps a readable object key (``table public.users``, ``column public.users.email``,
``index public.ix_users_email`` ...) to a normalized definition. Two databases built by the
same DDL give equal snapshots: definitions carry no OIDs, owners, sequence values, column
positions or anything else that depends on history rather than on the schema itself.

``migrate test`` compares the snapshot before a revision with the one after its downgrade,
``migrate verify`` compares a live database with a scratch one built by the migrations,
and backups store a snapshot in their manifest to check a restore against. The catalog
queries are in :mod:`releasegate.migrations.schema_catalog`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import psycopg
from psycopg import pq
from psycopg.rows import tuple_row

from releasegate.migrations.schema_catalog import QUERIES

__all__ = [
    "BASELINE_KEYS",
    "KINDS",
    "SchemaDifference",
    "SchemaSnapshot",
    "diff",
    "key_kind",
    "snapshot",
]

JSON_FORMAT = 1

# Every database made from template1 has the public schema; its presence is no trace of
# a migration, so an otherwise empty snapshot still counts as empty.
BASELINE_KEYS: frozenset[str] = frozenset({"schema public"})

# Object kinds as they start a key; two-word kinds first so prefix matching is unambiguous.
KINDS: tuple[str, ...] = (
    "materialized view",
    "foreign table",
    "aggregate",
    "column",
    "constraint",
    "extension",
    "function",
    "index",
    "policy",
    "procedure",
    "rule",
    "schema",
    "sequence",
    "table",
    "trigger",
    "type",
    "view",
)


def key_kind(key: str) -> str:
    """The object kind a key starts with (``column`` for ``column public.users.email``)."""
    for kind in KINDS:
        if key.startswith(kind + " "):
            return kind
    return key.partition(" ")[0]


@dataclass(frozen=True)
class SchemaSnapshot:
    """The schema objects of one database: object key -> normalized definition."""

    objects: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A read-only, key-sorted copy: the snapshot cannot change behind a caller's back
        # and serializes in a stable order.
        frozen = MappingProxyType(dict(sorted(self.objects.items())))
        object.__setattr__(self, "objects", frozen)

    def __hash__(self) -> int:
        return hash(frozenset(self.objects.items()))

    def __len__(self) -> int:
        return len(self.objects)

    def __contains__(self, key: object) -> bool:
        return key in self.objects

    def __iter__(self) -> Iterator[str]:
        return iter(self.objects)

    @property
    def is_empty(self) -> bool:
        """True when the database holds nothing but what every new database has."""
        return all(key in BASELINE_KEYS for key in self.objects)

    def get(self, key: str) -> str | None:
        return self.objects.get(key)

    def of_kind(self, kind: str) -> dict[str, str]:
        """The objects of one kind (``table``, ``column``, ...), keyed as in ``objects``."""
        return {key: value for key, value in self.objects.items() if key_kind(key) == kind}

    def names(self, kind: str) -> list[str]:
        """The names of the objects of one kind, without the kind prefix."""
        return [key[len(kind) + 1 :] for key in self.of_kind(kind)]

    def fingerprint(self) -> str:
        """A SHA-256 of the snapshot: equal snapshots have equal fingerprints."""
        payload = json.dumps(dict(self.objects), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, e.g. for a backup manifest."""
        return {"format": JSON_FORMAT, "objects": dict(self.objects)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SchemaSnapshot:
        """Rebuild a snapshot from :meth:`to_json` output; malformed data raises ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError("schema snapshot must be a JSON object")
        if data.get("format") != JSON_FORMAT:
            raise ValueError(f"unsupported schema snapshot format: {data.get('format')!r}")
        objects = data.get("objects")
        if not isinstance(objects, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in objects.items()
        ):
            raise ValueError("schema snapshot objects must map strings to strings")
        return cls(dict(objects))


@dataclass(frozen=True)
class SchemaDifference:
    """One object that is missing, unexpected, or defined differently."""

    key: str
    kind: Literal["missing", "unexpected", "changed"]
    expected: str | None
    actual: str | None

    @property
    def object_kind(self) -> str:
        return key_kind(self.key)

    def describe(self) -> str:
        """A one-line summary for a report."""
        if self.kind == "missing":
            return f"missing {self.key}: expected {_one_line(self.expected or '')}"
        if self.kind == "unexpected":
            return f"unexpected {self.key}: {_one_line(self.actual or '')}"
        expected, actual = _around_first_difference(self.expected or "", self.actual or "")
        return f"changed {self.key}: expected {expected}, found {actual}"


def diff(expected: SchemaSnapshot, actual: SchemaSnapshot) -> list[SchemaDifference]:
    """Every difference between two snapshots, sorted by key."""
    differences: list[SchemaDifference] = []
    for key in sorted(expected.objects.keys() | actual.objects.keys()):
        want = expected.objects.get(key)
        have = actual.objects.get(key)
        if want == have:
            continue
        if have is None:
            differences.append(SchemaDifference(key, "missing", want, None))
        elif want is None:
            differences.append(SchemaDifference(key, "unexpected", None, have))
        else:
            differences.append(SchemaDifference(key, "changed", want, have))
    return differences


_MAX_SHOWN = 100


def _one_line(text: str, limit: int = _MAX_SHOWN) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _around_first_difference(a: str, b: str, limit: int = 60) -> tuple[str, str]:
    # Long definitions (functions, views) often differ deep inside: show both around the
    # first differing character, or the two excerpts would look the same.
    a, b = " ".join(a.split()), " ".join(b.split())
    if len(a) <= limit and len(b) <= limit:
        return a, b
    same = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        same += 1
    start = max(0, same - limit // 3)

    def clip(text: str) -> str:
        head = "…" if start else ""
        tail = "…" if start + limit < len(text) else ""
        return head + text[start : start + limit] + tail

    return clip(a), clip(b)


def snapshot(
    conn: psycopg.Connection[Any],
    *,
    exclude_schemas: Iterable[str] = ("releasegate",),
    exclude_tables: Iterable[str] = ("alembic_version",),
) -> SchemaSnapshot:
    """Introspect the schema of the database ``conn`` is connected to.

    System schemas are always skipped. ``exclude_tables`` entries match a table in any
    schema by name, or one table when written ``schema.table``; everything belonging to an
    excluded table (columns, constraints, indexes, triggers, owned sequences) goes with it.
    The connection's transaction state and search_path are left as they were.
    """
    params = {"schemas": list(exclude_schemas), "tables": list(exclude_tables)}
    collected: dict[str, list[str]] = {}
    # Our own transaction can be a read-only snapshot of the catalogs; inside a caller's
    # transaction this becomes a savepoint and reads what that transaction sees.
    own_transaction = conn.info.transaction_status == pq.TransactionStatus.IDLE
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        if own_transaction:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT pg_catalog.current_setting('search_path')")
        saved = cur.fetchone()
        cur.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)")
        for query, make in QUERIES:
            cur.execute(query, params)
            for row in cur.fetchall():
                key, definition = make(row)
                collected.setdefault(key, []).append(definition)
        if not own_transaction and saved is not None:
            # A SET LOCAL survives the release of a savepoint: put the caller's back.
            cur.execute("SELECT pg_catalog.set_config('search_path', %s, true)", saved)
    # Names are unique per kind and parent, so a key normally has one definition; should a
    # catalog oddity yield two, keep both in a stable order rather than one at random.
    return SchemaSnapshot({key: "\n".join(sorted(defs)) for key, defs in collected.items()})
