"""The row fingerprint file of Postgres (``postgres.rows.gz``): the SQL, writing, reading.

**The file** ``postgres.rows.gz`` (gzip, lines; ``format_version`` 1)::

    {"format": "releasegate.postgres.rows", "format_version": 1, "digest": "md5-64", ...}
    #{"table": "public.users", "schema": "public", "name": "users",
      "key": ["id"], "columns": ["id", "email", ...]}
    <digest>\\t<key>          one line per row, sorted by key (bytes, COLLATE "C")
    ...
    #{"table": "public.events", ..., "key": [], ...}
    <digest>\\t<count>        a table without a primary key: a multiset of row digests
    #{"end": true, "tables": 2, "lines": 1234}

``<digest>`` is the first 16 hex digits (64 bits) of ``md5(ROW(<columns>)::text)``, the
row's text form over the columns the table had then, computed by Postgres;
``<key>`` is the primary key's text form (``42``; ``(7,abc)`` for several columns), in
``COPY`` text escaping. Every table of the service is covered (the ledger schema and
``alembic_version`` excepted: versions are compared on their own). The session pins the
settings that shape the text of values (``TimeZone``, ``DateStyle``, ...), so a compare in
another session computes the same digests.

**Size and cost.** About 25 bytes per row before compression (16 of digest, the key,
two separators), about 12 after with integer keys (more with long text keys); written by
``COPY ... TO STDOUT`` straight into gzip, so Python's memory stays flat. Sorting by
key text costs Postgres one sort per table (spilling to disk past ``work_mem``); a
backup pays it inside its snapshot: about 5 s per million rows on 2 cores
(``benchmarks/content_fingerprints.py``). ``backup.fingerprints = false`` leaves the file
out when a backup's time matters more than a content check.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from releasegate.errors import CheckFailed
from releasegate.ledger.schema import LEDGER_SCHEMA

ROWS_FILE = "postgres.rows.gz"
FORMAT = "releasegate.postgres.rows"
FORMAT_VERSION = 1
DIGEST_HEX = 16
_GZIP_LEVEL = 1  # digests do not compress; speed matters inside the backup's snapshot
_VERSION_TABLE = "alembic_version"

# Settings that shape the text form of values, pinned so every session digests alike.
TEXT_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "standard_conforming_strings": "on",
}

_TABLES = """
SELECT n.nspname, c.relname,
  ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum),
  ARRAY(SELECT a.attname::text FROM pg_catalog.pg_constraint k
        CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
        WHERE k.conrelid = c.oid AND k.contype = 'p' ORDER BY u.ord)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND n.nspname <> %(ledger)s AND c.relkind = 'r' AND c.relname <> %(version_table)s
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend d
      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
  )
"""


@dataclass(frozen=True)
class TableInfo:
    """A table of the service: its columns in order and its primary key's columns."""

    schema: str
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def order(self) -> tuple[str, str]:
        return (self.schema, self.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.qualified,
            "schema": self.schema,
            "name": self.name,
            "key": list(self.key),
            "columns": list(self.columns),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableInfo:
        return cls(
            str(data["schema"]),
            str(data["name"]),
            tuple(str(c) for c in data["columns"]),
            tuple(str(c) for c in data["key"]),
        )


def list_tables(conn: psycopg.Connection[Any]) -> list[TableInfo]:
    """Every table of the service, sorted by (schema, name) as Python sorts strings."""
    rows = conn.execute(_TABLES, {"ledger": LEDGER_SCHEMA, "version_table": _VERSION_TABLE})
    found = [TableInfo(str(s), str(n), tuple(cols), tuple(key)) for s, n, cols, key in rows]
    return sorted(found, key=lambda t: t.order)


def pin_text_settings(conn: psycopg.Connection[Any]) -> None:
    """Fix the text form of values for the current transaction (:data:`TEXT_SETTINGS`)."""
    for name, value in TEXT_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


# -- SQL of the digests ------------------------------------------------------------------


def _cols(columns: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns)


def digest_sql(columns: tuple[str, ...]) -> sql.Composable:
    """``left(md5(ROW(t.a, t.b)::text), 16)``: a row's digest over ``columns``."""
    return sql.SQL("left(md5(ROW({})::text), {})").format(_cols(columns), sql.Literal(DIGEST_HEX))


def key_sql(key: tuple[str, ...]) -> sql.Composable:
    """The primary key's text: the value for one column, ``ROW(...)::text`` for several."""
    if len(key) == 1:
        return sql.SQL("t.{}::text").format(sql.Identifier(key[0]))
    return sql.SQL("ROW({})::text").format(_cols(key))


def source_sql(table: TableInfo) -> sql.Composable:
    return sql.SQL("{}.{} AS t").format(sql.Identifier(table.schema), sql.Identifier(table.name))


def multiset_sql(columns: tuple[str, ...], table: TableInfo) -> sql.Composable:
    """Each distinct row digest over ``columns`` with its count, sorted by digest."""
    return sql.SQL(
        'SELECT d, count(*) FROM (SELECT {} AS d FROM {}) AS r GROUP BY d ORDER BY d COLLATE "C"'
    ).format(digest_sql(columns), source_sql(table))


def rows_sql(table: TableInfo) -> sql.Composable:
    if table.key:
        key = key_sql(table.key)
        return sql.SQL('SELECT {}, {} FROM {} ORDER BY ({}) COLLATE "C"').format(
            digest_sql(table.columns), key, source_sql(table), key
        )
    return multiset_sql(table.columns, table)


# -- writing -----------------------------------------------------------------------------


def write_fingerprints(conn: psycopg.Connection[Any], path: Path) -> dict[str, Any]:
    """Write the fingerprint file of every table, read in ``conn``'s current transaction.

    The caller opens the transaction (the backup's repeatable-read snapshot); the text
    settings are pinned for the rest of it. Returns what the manifest records.
    """
    pin_text_settings(conn)
    tables = list_tables(conn)
    lines = 0
    with gzip.GzipFile(path, "wb", compresslevel=_GZIP_LEVEL) as out:
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "digest": f"md5-{DIGEST_HEX * 4}",
            "settings": TEXT_SETTINGS,
        }
        out.write(json.dumps(header).encode() + b"\n")
        cur = conn.cursor()
        for table in tables:
            out.write(b"#" + json.dumps(table.to_json()).encode() + b"\n")
            query = sql.SQL("COPY ({}) TO STDOUT").format(rows_sql(table))
            with cur.copy(query) as copy:
                for block in copy:
                    out.write(block)
            lines += max(cur.rowcount, 0)
        trailer = {"end": True, "tables": len(tables), "lines": lines}
        out.write(b"#" + json.dumps(trailer).encode() + b"\n")
    return {"file": path.name, "tables": len(tables), "lines": lines, "digest": header["digest"]}


# -- reading -----------------------------------------------------------------------------

_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)


def unescape(field: bytes) -> bytes:
    """A field of ``COPY`` text output as the bytes it stands for."""
    if b"\\" not in field:
        return field
    return _ESCAPED.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), field)


class TableSection:
    """One table of a fingerprint file; :meth:`rows` yields its lines once."""

    def __init__(self, table: TableInfo, reader: RowsFile) -> None:
        self.table = table
        self._reader = reader
        self._next: bytes | None = None  # the line that ended the section

    def lines(self) -> Iterator[bytes]:
        """The section's lines as written (``COPY`` text, no newline), checked for shape."""
        readline = self._reader.readline
        while True:
            line = readline()
            if not line or line.startswith(b"#"):
                self._next = line
                return
            if line[DIGEST_HEX : DIGEST_HEX + 1] != b"\t" or not line.endswith(b"\n"):
                raise self._reader.damaged(f"a malformed line in table {self.table.qualified}")
            yield line[:-1]

    def rows(self) -> Iterator[tuple[bytes, Any]]:
        """(key, digest) sorted by key; without a primary key (digest, count) by digest."""
        keyed = bool(self.table.key)
        for line in self.lines():
            digest, rest = line[:DIGEST_HEX], line[DIGEST_HEX + 1 :]
            if keyed:
                yield unescape(rest), digest
                continue
            try:
                count = int(rest)
            except ValueError:
                raise self._reader.damaged(f"a malformed count in {self.table.qualified}") from None
            yield digest, count

    def finish(self) -> bytes:
        """Read past the rest of the section; the line after it."""
        if self._next is None:
            for _ in self.rows():
                pass
        assert self._next is not None
        return self._next


class RowsFile:
    """Reads a fingerprint file table by table; :class:`CheckFailed` when damaged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh = gzip.GzipFile(path, "rb")  # closed by close()
        except OSError as exc:
            raise CheckFailed(f"cannot read {path.name}: {exc}") from None
        header = self._json(self.readline())
        if header.get("format") != FORMAT:
            self.close()
            raise CheckFailed(f"{path.name} is not a releasegate row fingerprint file")
        if header.get("format_version") != FORMAT_VERSION:
            self.close()
            raise CheckFailed(
                f"{path.name} has row fingerprint format {header.get('format_version')};"
                f" this releasegate reads version {FORMAT_VERSION}"
            )
        self.header = header

    def damaged(self, why: str) -> CheckFailed:
        return CheckFailed(f"row fingerprint file {self.path.name} is damaged: {why}")

    def readline(self) -> bytes:
        try:
            return self._fh.readline()
        except (OSError, EOFError, zlib.error) as exc:
            raise self.damaged(str(exc)) from None

    def _json(self, line: bytes) -> dict[str, Any]:
        try:
            data = json.loads(line)
        except ValueError:
            raise self.damaged("an unreadable header line") from None
        if not isinstance(data, dict):
            raise self.damaged("a header line that is not an object")
        return data

    def sections(self) -> Iterator[TableSection]:
        """Every table in file order, (schema, name) sorted; checks the trailer."""
        line = self.readline()
        while True:
            if not line:
                raise self.damaged("it ends without a trailer")
            if not line.startswith(b"#"):
                raise self.damaged("rows outside a table")
            meta = self._json(line[1:])
            if meta.get("end") is True:
                if self.readline():
                    raise self.damaged("data after the trailer")
                return
            try:
                section = TableSection(TableInfo.from_json(meta), self)
            except (KeyError, TypeError) as exc:
                raise self.damaged(f"a table header without {exc}") from None
            yield section
            line = section.finish()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RowsFile:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
