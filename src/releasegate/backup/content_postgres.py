"""Postgres rows compared with a backup set's row fingerprints, by primary key.

The fingerprint file (:mod:`releasegate.backup.content_rows`) holds, per table, the
rows' keys and digests sorted by key. A comparison reads the live table with the same
digests over the columns of backup time, in the same order, inside one repeatable-read
snapshot, and merges the two streams: constant memory whatever the table size. An equal
line (same key, same digest) is an unchanged row without being parsed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from releasegate import db
from releasegate.backup.base import StoreBackup
from releasegate.backup.content_diff import (
    ContentDiff,
    ScopeDiff,
    checked_file,
    merge_keys,
    short,
)
from releasegate.backup.content_rows import (
    DIGEST_HEX,
    ROWS_FILE,
    RowsFile,
    TableInfo,
    TableSection,
    digest_sql,
    key_sql,
    list_tables,
    multiset_sql,
    pin_text_settings,
    rows_sql,
    source_sql,
    unescape,
    write_fingerprints,
)
from releasegate.config import Settings
from releasegate.errors import ConfigError

# What the backup of Postgres (:mod:`releasegate.backup.postgres`) uses from here.
__all__ = [
    "ROWS_FILE",
    "compare_postgres",
    "fingerprint_file",
    "take_postgres_fingerprints",
    "write_fingerprints",
]


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
    """The fingerprint file of a Postgres entry (checked against the manifest's size and
    SHA-256), or None when the set has none."""
    if not any(f.name == ROWS_FILE for f in entry.files):
        return None
    return checked_file(set_dir, entry, ROWS_FILE)


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
        d1, d2, key, source_sql(live), key
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
    keyed_now = live is not None and set(table.key) <= set(live.columns)
    dropped = live is not None and not set(table.columns) <= set(live.columns)
    if live is not None and keyed_now and usable_alt is None and not dropped:
        # The common case: the live rows in the file's own format, mostly equal lines.
        lines = _copy_lines(conn, rows_sql(table))
        with contextlib.closing(lines):  # a COPY left open would block the connection
            _merge_lines(base.lines(), lines, scope, accepting)
        return
    live_rows: Generator[tuple[bytes, tuple[bytes, bytes]]] = _nothing()
    if live is not None and keyed_now:
        alt_table = usable_alt.table if usable_alt else None
        live_rows = _live_keyed(conn, live, table, alt_table)
    alt_rows = usable_alt.rows() if usable_alt else _nothing()
    with contextlib.closing(live_rows):
        _merge_keyed(base.rows(), alt_rows, live_rows, scope, accepting, dropped)
    if live is not None and not keyed_now:
        # Its key columns are gone: no row can be matched; the live ones count as added.
        _count_added_table(conn, live, scope)


def _merge_lines(
    base_lines: Iterator[bytes], live_lines: Iterator[bytes], scope: ScopeDiff, accepting: bool
) -> None:
    """Merge two streams of ``digest<TAB>key`` lines sorted by key: an equal line is an
    unchanged row, without parsing it."""
    gone = "accepted" if accepting else "missing"
    start = DIGEST_HEX + 1
    b = next(base_lines, None)
    now = next(live_lines, None)
    kept = 0
    while b is not None or now is not None:
        if b == now:
            kept += 1
            b, now = next(base_lines, None), next(live_lines, None)
            continue
        b_key = unescape(b[start:]) if b is not None else None
        now_key = unescape(now[start:]) if now is not None else None
        if now_key is None or (b_key is not None and b_key < now_key):
            assert b is not None and b_key is not None
            scope.count(gone, short(b_key.decode("utf-8", "replace")))
            b = next(base_lines, None)
        elif b_key is None or now_key < b_key:
            assert now is not None
            scope.count("added", short(now_key.decode("utf-8", "replace")))
            now = next(live_lines, None)
        else:
            scope.count("changed", short(b_key.decode("utf-8", "replace")))
            b, now = next(base_lines, None), next(live_lines, None)
    scope.count("kept_unchanged", n=kept)


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
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(source_sql(live))).fetchone()
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
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(source_sql(table))).fetchone()
    total = int(row[0]) if row else 0
    shown: list[str] = []
    if table.key and total:
        key = key_sql(table.key)
        query = sql.SQL('SELECT {} FROM {} ORDER BY ({}) COLLATE "C" LIMIT {}').format(
            key, source_sql(table), key, sql.Literal(10)
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
