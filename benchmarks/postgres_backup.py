"""releasegate's Postgres backup and verified restore against pg_dump/pg_restore by hand.

A database of about ``--size-mb`` (default 1024) is built once with ``generate_series``
(accounts and events with an index, part compressible text, part hex) and reused by name
on later runs. Each round then times, as a user would run them:

- ``releasegate backup create --store postgres`` against ``pg_dump`` with the same format
  and options (the ledger schema excluded);
- ``releasegate backup verify`` (restore into a scratch database, compare rows per table,
  schema and revision) against ``pg_restore`` into a fresh database by hand;
- ``releasegate backup restore --yes`` into a database that holds the data already against
  ``pg_restore --clean --if-exists`` into it by hand.

Figures are MB/s of the source database (``pg_database_size``) and the ratio
releasegate/manual per step. Target: ratio <= 1.3x.

    python benchmarks/postgres_backup.py [--size-mb 1024] [--format custom] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from _common import BIN, alternate, scratch_db, server_url, url_for
from psycopg import sql

BATCH_ROWS = 500_000
CONFIG = """\
[service]
name = "bench-backup"

[postgres]
url_env = "BENCH_DATABASE_URL"

[backup]
dir = "{backups}"
postgres_format = "{fmt}"
jobs = {jobs}
"""


def ensure_database(server: str, name: str, size_mb: int) -> str:
    """The URL of the benchmark database, built to about ``size_mb`` unless it exists."""
    url = url_for(server, name)
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(url, autocommit=True) as conn:
        done = conn.execute("SELECT to_regclass('public.bench_meta')").fetchone()
        if done and done[0]:
            print(f"reusing database {name}")
            return url
        print(f"building database {name} of about {size_mb} MB ...", flush=True)
        started = time.perf_counter()
        conn.execute("DROP TABLE IF EXISTS events, accounts")
        conn.execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL,"
            " plan text NOT NULL, created_at timestamptz NOT NULL)"
        )
        conn.execute(
            "INSERT INTO accounts SELECT g, 'account ' || g,"
            " (ARRAY['free','team','pro'])[g % 3 + 1],"
            " '2024-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 100000) g"
        )
        conn.execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, account_id int NOT NULL"
            " REFERENCES accounts (id), kind text NOT NULL, payload text NOT NULL,"
            " created_at timestamptz NOT NULL)"
        )
        next_id = 1
        while True:
            conn.execute(
                "INSERT INTO events SELECT g, 1 + g %% 100000,"
                " (ARRAY['login','view','edit','share','delete'])[g %% 5 + 1],"
                " 'note ' || (g %% 977) || ' ' || md5(g::text) || ' lorem ipsum dolor sit amet',"
                " '2024-01-01'::timestamptz + g * interval '1 second'"
                " FROM generate_series(%s::bigint, %s::bigint) g",
                (next_id, next_id + BATCH_ROWS - 1),
            )
            next_id += BATCH_ROWS
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None
            # The index below adds about a fifth; stop a little short.
            if row[0] * 1.2 >= size_mb * 1024 * 1024:
                break
        conn.execute("CREATE INDEX events_account_created ON events (account_id, created_at)")
        conn.execute("VACUUM ANALYZE")
        conn.execute("CREATE TABLE bench_meta (size_mb int)")
        conn.execute("INSERT INTO bench_meta VALUES (%s)", (size_mb,))
        print(f"built in {time.perf_counter() - started:.0f}s", flush=True)
    return url


def database_mb(url: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return float(row[0]) / (1024 * 1024)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--format", choices=["custom", "directory"], default="custom")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--db-name", help="benchmark database (default: rgbench_backup_<size>mb)")
    args = parser.parse_args()
    server = server_url()
    source = ensure_database(
        server, args.db_name or f"rgbench_backup_{args.size_mb}mb", args.size_mb
    )
    size_mb = database_mb(source)
    from releasegate.backup.postgres_tools import find_tool, libpq_target

    pg_dump = find_tool("pg_dump", 15).path
    pg_restore = find_tool("pg_restore", 15).path
    fmt_flag = "--format=directory" if args.format == "directory" else "--format=custom"
    dump_jobs = [f"--jobs={args.jobs}"] if args.format == "directory" and args.jobs > 1 else []
    restore_jobs = [f"--jobs={args.jobs}"] if args.jobs > 1 else []

    with tempfile.TemporaryDirectory(prefix="rgbench-backup-") as tmp, scratch_db(server) as target:
        work = Path(tmp)
        config = work / "releasegate.toml"
        config.write_text(CONFIG.format(backups=work / "sets", fmt=args.format, jobs=args.jobs))
        base_env = {**os.environ, "RELEASEGATE_CONFIG": str(config)}
        source_env = {**base_env, "BENCH_DATABASE_URL": source}
        target_env = {**base_env, "BENCH_DATABASE_URL": target}
        manual = work / "manual.dump"
        rg = str(BIN / "releasegate")
        _url, pg_env = libpq_target(source, "bench")
        sets_made: list[str] = []

        def rg_backup() -> float:
            took = timed([rg, "backup", "create", "--store", "postgres"], source_env)
            sets_made.append(sorted(p.name for p in (work / "sets").iterdir())[-1])
            return took

        def manual_backup() -> float:
            subprocess.run(["rm", "-rf", str(manual)], check=True)
            cmd = [pg_dump, fmt_flag, f"--file={manual}", "--no-password"]
            cmd += ["--exclude-schema=releasegate", *dump_jobs, f"--dbname={_url}"]
            return timed(cmd, pg_env)

        def rg_verify() -> float:
            return timed([rg, "backup", "verify", sets_made[-1]], source_env)

        def manual_verify() -> float:
            with scratch_db(server) as scratch:
                s_url, s_env = libpq_target(scratch, "bench")
                cmd = [pg_restore, "--exit-on-error", "--no-owner", "--no-privileges"]
                cmd += [*restore_jobs, f"--dbname={s_url}", str(manual)]
                started = time.perf_counter()
                timed(cmd, s_env)
                return time.perf_counter() - started

        def rg_restore() -> float:
            set_path = str(work / "sets" / sets_made[-1])
            return timed([rg, "backup", "restore", set_path, "--yes"], target_env)

        def manual_restore() -> float:
            t_url, t_env = libpq_target(target, "bench")
            cmd = [pg_restore, "--exit-on-error", "--clean", "--if-exists"]
            cmd += [*restore_jobs, f"--dbname={t_url}", str(manual)]
            return timed(cmd, t_env)

        steps: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {
            "backup": (rg_backup, manual_backup),
            "verified restore (scratch db)": (rg_verify, manual_verify),
            "restore onto existing data": (rg_restore, manual_restore),
        }
        print(
            f"database {size_mb:.0f} MB, format {args.format}, jobs {args.jobs},"
            f" rounds {args.rounds}",
            flush=True,
        )
        report: dict[str, dict[str, float]] = {}
        for step, (ours, theirs) in steps.items():
            samples = alternate(args.rounds, {"manual": theirs, "releasegate": ours})
            med = {name: statistics.median(values) for name, values in samples.items()}
            ratio = med["releasegate"] / med["manual"]
            report[step] = {
                "manual_s": round(med["manual"], 2),
                "releasegate_s": round(med["releasegate"], 2),
                "manual_mb_s": round(size_mb / med["manual"], 1),
                "releasegate_mb_s": round(size_mb / med["releasegate"], 1),
                "ratio": round(ratio, 2),
            }
            print(
                f"{step:<30} manual {med['manual']:7.1f}s ({size_mb / med['manual']:6.1f} MB/s)"
                f"   releasegate {med['releasegate']:7.1f}s"
                f" ({size_mb / med['releasegate']:6.1f} MB/s)"
                f"   ratio {ratio:.2f}x ({'met' if ratio <= 1.3 else 'MISSED'} <= 1.3x)",
                flush=True,
            )
        dump_mb = sum(
            f.stat().st_size for f in (work / "sets" / sets_made[-1]).rglob("*") if f.is_file()
        ) / (1024 * 1024)
        print(f"dump size {dump_mb:.0f} MB ({dump_mb / size_mb:.0%} of the database)")
        print(json.dumps(report))


if __name__ == "__main__":
    main()
