"""Row fingerprints of Postgres: the cost of taking them and of comparing a database with them.

A scratch database gets ``--rows`` rows in a keyed table (bigint key, text, jsonb,
timestamptz) and a tenth of that in a table without a primary key. Each round times:

- ``write``: the fingerprint file, read in one repeatable-read snapshot (what a backup
  adds inside its snapshot), against a plain ``COPY ... TO STDOUT`` of the same rows
  (``copy``: the floor any per-row read pays);
- ``compare``: the live database against the file (merge by key, constant memory),
  with 1% of the rows changed, 1% deleted and 1% added.

Printed: seconds, rows/s, file bytes per row, peak RSS of this process.

    python benchmarks/content_fingerprints.py [--rows 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from _common import scratch_db, server_url, summary

from releasegate.backup.base import FileEntry, StoreBackup
from releasegate.backup.content import compare_postgres, describe, take_postgres_fingerprints
from releasegate.backup.content_postgres import ROWS_FILE
from releasegate.config import load_config

CONFIG = '[service]\nname = "bench-content"\n\n[postgres]\nurl_env = "BENCH_DATABASE_URL"\n'


def build(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.items (id bigint PRIMARY KEY, title text, body jsonb,"
            " at timestamptz)"
        )
        conn.execute(
            "INSERT INTO public.items SELECT g, 'item ' || g, jsonb_build_object('n', g,"
            " 'h', md5(g::text)), '2026-01-01'::timestamptz + g * interval '1 second'"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("CREATE TABLE public.log (msg text, n int)")
        conn.execute(
            "INSERT INTO public.log SELECT 'event ' || (g %% 1000), g %% 7"
            " FROM generate_series(1, %s) g",
            (rows // 10,),
        )
        conn.execute("VACUUM ANALYZE")


def copy_seconds(url: str) -> float:
    started = time.monotonic()
    with (
        psycopg.connect(url) as conn,
        conn.cursor().copy("COPY (SELECT * FROM public.items ORDER BY id) TO STDOUT") as copy,
    ):
        for _block in copy:
            pass
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch_db(server_url()) as url, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "releasegate.toml").write_text(CONFIG)
        settings = load_config(root / "releasegate.toml", {**os.environ, "BENCH_DATABASE_URL": url})
        started = time.monotonic()
        build(url, args.rows)
        print(f"built {args.rows} + {args.rows // 10} rows in {time.monotonic() - started:.1f} s")
        set_dir = root / "set"
        set_dir.mkdir()
        writes: list[float] = []
        copies: list[float] = []
        for _ in range(args.rounds):
            copies.append(copy_seconds(url))
            started = time.monotonic()
            take_postgres_fingerprints(settings, set_dir / ROWS_FILE)
            writes.append(time.monotonic() - started)
        size = (set_dir / ROWS_FILE).stat().st_size
        total = args.rows + args.rows // 10
        entry = StoreBackup(
            "postgres", "pg_dump custom", [FileEntry.of(set_dir, set_dir / ROWS_FILE)]
        )
        step = max(args.rows // 100, 1)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE public.items SET title = title || '!' WHERE id %% %s = 1", (step,))
            conn.execute("DELETE FROM public.items WHERE id %% %s = 2", (step,))
            conn.execute(
                "INSERT INTO public.items SELECT g, 'new', '{}', now()"
                " FROM generate_series(%s, %s) g",
                (args.rows + 1, args.rows + args.rows // 100),
            )
        compares: list[float] = []
        for _ in range(args.rounds):
            started = time.monotonic()
            diff = compare_postgres(settings, set_dir, entry)
            compares.append(time.monotonic() - started)
        print(summary("copy (floor)", copies))
        print(summary("write fingerprints", writes))
        print(summary("compare", compares))
        rates = f"write: {total / min(writes):,.0f} rows/s"
        print(f"{rates}; compare: {total / min(compares):,.0f} rows/s")
        print(f"file: {size:,} bytes, {size / total:.1f} bytes per row")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {peak:.0f} MB")
        for line in describe(diff):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
