"""Row fingerprints of Postgres: written with a backup, compared with the live database.

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

**Size and cost.** About 20-30 bytes per row before compression (16 of digest, the key,
two separators), 10-20 after; written by ``COPY ... TO STDOUT`` straight into gzip, so
Python's memory stays flat. Sorting by key text costs Postgres one sort per table
(spilling to disk past ``work_mem``); a backup pays it inside its snapshot. Turn it off
with ``backup.fingerprints = false`` when a backup's time matters more than a
content check (a rollback then has counts only).

**Comparing** reads the file and the live table (same digests, in one repeatable-read
snapshot) in key order and merges them: constant memory, whatever the table size.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import time
import zlib
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from releasegate import db
from releasegate.backup.base import StoreBackup
from releasegate.backup.content_diff import ContentDiff, ScopeDiff, merge_keys, short
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError
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


def _source(table: TableInfo) -> sql.Composable:
    return sql.SQL("{}.{} AS t").format(sql.Identifier(table.schema), sql.Identifier(table.name))


def multiset_sql(columns: tuple[str, ...], table: TableInfo) -> sql.Composable:
    """Each distinct row digest over ``columns`` with its count, sorted by digest."""
    return sql.SQL(
        'SELECT d, count(*) FROM (SELECT {} AS d FROM {}) AS r GROUP BY d ORDER BY d COLLATE "C"'
    ).format(digest_sql(columns), _source(table))


def _rows_query(table: TableInfo) -> sql.Composable:
    if table.key:
        key = key_sql(table.key)
        return sql.SQL('SELECT {}, {} FROM {} ORDER BY ({}) COLLATE "C"').format(
            digest_sql(table.columns), key, _source(table), key
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
            query = sql.SQL("COPY ({}) TO STDOUT").format(_rows_query(table))
            with cur.copy(query) as copy:
                for block in copy:
                    out.write(block)
            lines += max(cur.rowcount, 0)
        trailer = {"end": True, "tables": len(tables), "lines": lines}
        out.write(b"#" + json.dumps(trailer).encode() + b"\n")
    return {"file": path.name, "tables": len(tables), "lines": lines, "digest": header["digest"]}


def take_postgres_fingerprints(settings: Settings, out: Path) -> Path:
    """Write a fingerprint file (the backup's format) of the live database now, read in
    one repeatable-read snapshot; returns ``out``. Used after a migration that cannot be
    undone, so that a later comparison accepts the rows as it left them (``also_accept``).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with _connect(settings, "fingerprints") as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        write_fingerprints(conn, out)
    return out


def _connect(settings: Settings, purpose: str) -> psycopg.Connection[Any]:
    url = settings.postgres_url()
    db.check_url(url, f"${settings.raw.postgres.url_env}")
    return db.connect(url, purpose, connect_timeout=settings.raw.postgres.connect_timeout)


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

    def rows(self) -> Iterator[tuple[bytes, Any]]:
        """(key, digest) sorted by key; without a primary key (digest, count) by digest."""
        keyed = bool(self.table.key)
        while True:
            line = self._reader.readline()
            if not line or line.startswith(b"#"):
                self._next = line
                return
            first, sep, second = line.rstrip(b"\n").partition(b"\t")
            if not sep or len(first) != DIGEST_HEX:
                raise self._reader.damaged(f"a malformed line in table {self.table.qualified}")
            if keyed:
                yield unescape(second), first
            else:
                yield first, int(second)

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


class _SectionCursor:
    """Finds tables of a second fingerprint file, walking it once in table order."""

    def __init__(self, reader: RowsFile | None) -> None:
        self._sections = reader.sections() if reader is not None else iter(())
        self._current = next(self._sections, None)

    def find(self, table: TableInfo) -> TableSection | None:
        while self._current is not None and self._current.table.order < table.order:
            self._current = next(self._sections, None)
        if self._current is not None and self._current.table.order == table.order:
            return self._current
        return None


# -- comparing ---------------------------------------------------------------------------


def fingerprint_file(set_dir: Path, entry: StoreBackup) -> Path | None:
    """The fingerprint file of a Postgres entry, or None when the set has none."""
    if not any(f.name == ROWS_FILE for f in entry.files):
        return None
    path = set_dir / ROWS_FILE
    if not path.is_file():
        raise CheckFailed(f"{ROWS_FILE} is missing from backup set {set_dir.name}")
    return path


def _nothing() -> Generator[Any]:
    yield from ()


def _copy_lines(conn: psycopg.Connection[Any], query: sql.Composable) -> Generator[bytes]:
    """The lines of ``COPY (query) TO STDOUT``, streamed."""
    rest = b""
    with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as copy:
        for block in copy:
            lines = (rest + bytes(block)).split(b"\n")
            rest = lines.pop()
            yield from lines
    if rest:
        yield rest


def _live_keyed(
    conn: psycopg.Connection[Any], live: TableInfo, base: TableInfo, alt: TableInfo | None
) -> Generator[tuple[bytes, tuple[bytes, bytes]]]:
    """(key, (digest over the base's columns, digest over alt's)) of the live rows."""
    present = set(live.columns)
    empty = sql.Literal("")
    d1 = digest_sql(base.columns) if present >= set(base.columns) else empty
    d2 = digest_sql(alt.columns) if alt and present >= set(alt.columns) else empty
    key = key_sql(base.key)
    query = sql.SQL('SELECT {}, {}, {} FROM {} ORDER BY ({}) COLLATE "C"').format(
        d1, d2, key, _source(live), key
    )
    for line in _copy_lines(conn, query):
        first, second, key_text = line.split(b"\t", 2)
        yield unescape(key_text), (first, second)


def _compare_keyed(
    conn: psycopg.Connection[Any],
    base: TableSection,
    alt: TableSection | None,
    live: TableInfo | None,
    scope: ScopeDiff,
    accepting: bool,
) -> None:
    table = base.table
    usable_alt = alt if alt is not None and alt.table.key == table.key else None
    live_rows: Generator[tuple[bytes, tuple[bytes, bytes]]] = _nothing()
    if live is not None and set(table.key) <= set(live.columns):
        alt_table = usable_alt.table if usable_alt else None
        live_rows = _live_keyed(conn, live, table, alt_table)
    alt_rows = usable_alt.rows() if usable_alt else _nothing()
    dropped = live is not None and not set(table.columns) <= set(live.columns)
    # Closed on an error: a COPY left open would block the connection.
    with contextlib.closing(live_rows):
        _merge_keyed(base.rows(), alt_rows, live_rows, scope, accepting, dropped)


def _merge_keyed(
    base_rows: Iterator[tuple[bytes, Any]],
    alt_rows: Iterator[tuple[bytes, Any]],
    live_rows: Iterator[tuple[bytes, tuple[bytes, bytes]]],
    scope: ScopeDiff,
    accepting: bool,
    dropped: bool,
) -> None:
    for key, (b, a, now) in merge_keys(base_rows, alt_rows, live_rows):
        ident = short(key.decode("utf-8", "replace"))
        if b is None:
            if now is not None:
                scope.count("added", ident)
        elif now is None:
            # Gone, and gone after the accepted migration too (or its table): its doing.
            removed_by_migration = accepting and a is None
            scope.count("accepted" if removed_by_migration else "missing", ident)
        elif not dropped and now[0] == b:
            scope.count("kept_unchanged")
        elif a is not None and now[1] == a:
            scope.count("accepted", ident)
        else:
            scope.count("changed", ident)


def _compare_multiset(
    conn: psycopg.Connection[Any],
    base: TableSection,
    alt: TableSection | None,
    live: TableInfo | None,
    scope: ScopeDiff,
    accepting: bool,
) -> None:
    """A table without a primary key: equal digests pair off, the rest are missing/added."""
    table = base.table
    if live is not None and not set(table.columns) <= set(live.columns):
        # Columns dropped: rows without a key cannot be told apart, only counted.
        base_total = sum(n for _d, n in base.rows())
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_source(live))).fetchone()
        live_total = int(row[0]) if row else 0
        alt_fits = alt is not None and set(alt.table.columns) <= set(live.columns)
        kept_rows = min(base_total, live_total)
        scope.count("accepted" if accepting and alt_fits else "changed", n=kept_rows)
        scope.count("missing", n=max(base_total - live_total, 0))
        scope.count("added", n=max(live_total - base_total, 0))
        return
    lines = _copy_lines(conn, multiset_sql(table.columns, live)) if live else _nothing()
    with contextlib.closing(lines):
        live_rows = ((d, int(n)) for d, n in (ln.split(b"\t", 1) for ln in lines))
        alt_rows = alt.rows() if alt is not None else _nothing()
        _merge_multiset(base.rows(), alt_rows, live_rows, scope, accepting)


def _merge_multiset(
    base_rows: Iterator[tuple[bytes, Any]],
    alt_rows: Iterator[tuple[bytes, Any]],
    live_rows: Iterator[tuple[bytes, int]],
    scope: ScopeDiff,
    accepting: bool,
) -> None:
    for digest, (b, a, now) in merge_keys(base_rows, alt_rows, live_rows):
        b, a, now = b or 0, a or 0, now or 0
        ident = f"row md5 {digest.decode()}"
        if min(b, now):
            scope.count("kept_unchanged", n=min(b, now))
        if b > now:
            accepted = min(b - now, max(b - a, 0)) if accepting else 0
            if accepted:
                scope.count("accepted", ident, n=accepted)
            if b - now - accepted:
                scope.count("missing", ident, n=b - now - accepted)
        elif now > b:
            scope.count("added", ident, n=now - b)


def _count_added_table(conn: psycopg.Connection[Any], table: TableInfo, scope: ScopeDiff) -> None:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_source(table))).fetchone()
    total = int(row[0]) if row else 0
    shown: list[str] = []
    if table.key and total:
        key = key_sql(table.key)
        query = sql.SQL('SELECT {} FROM {} ORDER BY ({}) COLLATE "C" LIMIT {}').format(
            key, _source(table), key, sql.Literal(10)
        )
        shown = [short(str(r[0])) for r in conn.execute(query)]
    for ident in shown:
        scope.count("added", ident)
    scope.count("added", n=total - len(shown))


def _maybe_open(path: Path | None) -> contextlib.AbstractContextManager[RowsFile | None]:
    return RowsFile(path) if path is not None else contextlib.nullcontext(None)


def compare_postgres(
    settings: Settings, set_dir: Path, entry: StoreBackup, *, also_accept: Path | None = None
) -> ContentDiff:
    """Compare the live database with the set's row fingerprints, table by table.

    Per row, by primary key: ``kept_unchanged`` (same digest over the columns the table
    had at backup time: columns added since are ignored), ``changed`` (another digest, or
    a column of the backup was dropped), ``missing``, ``added``. Tables without a primary
    key compare as multisets of row digests (no ``changed``: a changed row shows as one
    missing and one added). Tables created since count all their rows as added.

    ``also_accept``: a fingerprint file taken later (after an irreversible migration, by
    :func:`take_postgres_fingerprints`); a row that differs from the set but matches it,
    or that is gone from it and from the live table, counts as ``accepted``.
    Everything is read in one repeatable-read snapshot. Raises :class:`ConfigError` when
    the set was taken without fingerprints.
    """
    path = fingerprint_file(set_dir, entry)
    if path is None:
        raise ConfigError(
            f"backup set {set_dir.name} has no row fingerprints ({ROWS_FILE}): it was taken"
            " with backup.fingerprints = false or by an older releasegate"
        )
    started = time.monotonic()
    diff = ContentDiff("postgres", set_dir.name)
    accepting = also_accept is not None
    with (
        RowsFile(path) as base_file,
        _maybe_open(also_accept) as alt_file,
        _connect(settings, "content compare") as conn,
        conn.transaction(),
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        pin_text_settings(conn)
        live = {t.qualified: t for t in list_tables(conn)}
        alt_cursor = _SectionCursor(alt_file)
        seen: set[str] = set()
        for section in base_file.sections():
            name = section.table.qualified
            seen.add(name)
            alt = alt_cursor.find(section.table)
            compare = _compare_keyed if section.table.key else _compare_multiset
            compare(conn, section, alt, live.get(name), diff.scope(name), accepting)
        for name, table in live.items():
            if name not in seen:
                _count_added_table(conn, table, diff.scope(name))
    diff.seconds = time.monotonic() - started
    return diff
