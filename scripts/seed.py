"""Fill the example service's stores with a realistic, deterministic dataset.

Run with the project's virtualenv, the store URLs in the environment as for releasegate::

    .venv/bin/python scripts/seed.py --users 5000                # every configured store
    .venv/bin/python scripts/seed.py --users 200 --migrate-to 0002 --stores postgres

- **Postgres** (plain SQL, ``generate_series``): ``--users`` users, ``--docs-per-user``
  documents each, ``--chunks-per-doc`` chunks per document (with a vector id), and one
  audit-log entry per document. The columns follow the database's revision (``full_name``
  before 0006, ``display_name`` from 0003). The database must be migrated (``--migrate-to
  REV`` migrates it first with releasegate) and must hold no users yet.
- **Redis** (when ``[redis]`` is configured and its URL variable set): ``--sessions``
  sessions (default: as many as users) and their cache entries, via
  ``notes_app.seed_redis.seed_sessions``.
- **Qdrant** (when ``[qdrant]`` is configured): ``--vectors`` points (default: as many as
  users) in the ``documents`` collection, via ``notes_app.seed_qdrant.seed_documents``.

The same arguments and ``--seed`` always give the same data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from releasegate import db
from releasegate.config import Settings, load_config
from releasegate.errors import ConfigError, ReleasegateError, StateError

REPO_ROOT = Path(__file__).resolve().parent.parent

STORES = ("postgres", "redis", "qdrant")
EPOCH = "2024-01-01 00:00:00+00"


def _columns(conn: Any, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    ).fetchall()
    return {r[0] for r in rows}


def seed_postgres(
    url: str,
    *,
    users: int,
    docs_per_user: int = 2,
    chunks_per_doc: int = 3,
    seed: int = 0,
) -> dict[str, int]:
    """Insert the deterministic dataset into a migrated, user-less database; rows per table."""
    with db.connect(url, "seed") as conn:
        user_columns = _columns(conn, "users")
        if not user_columns:
            raise StateError(
                "the database has no users table: migrate it first (--migrate-to head)"
            )
        row = conn.execute("SELECT count(*) FROM public.users").fetchone()
        if row and row[0]:
            raise StateError(f"the database holds {row[0]} users already: seed an empty one")
        params = {
            "users": users,
            "docs": docs_per_user,
            "chunks": chunks_per_doc,
            "seed": str(seed),
            "epoch": EPOCH,
        }
        names = ["email", "created_at"]
        values = [
            "'user' || g || '.' || substr(md5(%(seed)s || g), 1, 6) || '@example.com'",
            "%(epoch)s::timestamptz + g * interval '7 minutes'",
        ]
        display = "initcap(substr(md5(%(seed)s || 'n' || g), 1, 6)) || ' User ' || g"
        if "full_name" in user_columns:
            names.append("full_name")
            values.append(display)
        if "display_name" in user_columns:
            names.append("display_name")
            values.append(display)
        with conn.transaction():
            conn.execute(
                f"INSERT INTO public.users ({', '.join(names)})"
                f" SELECT {', '.join(values)} FROM generate_series(1, %(users)s) g",
                params,
            )
            conn.execute(
                "INSERT INTO public.documents (owner_id, title, body, created_at)"
                " SELECT u.id,"
                "   'Notes ' || d || ' of user ' || u.id,"
                "   repeat('lorem ipsum dolor sit amet '"
                "          || substr(md5(%(seed)s || u.id || d), 1, 8) || ' ',"
                "          5 + (abs(hashtext(%(seed)s || u.id || '/' || d)) %% 60)),"
                "   u.created_at + d * interval '1 hour'"
                " FROM public.users u, generate_series(1, %(docs)s) d ORDER BY u.id, d",
                params,
            )
            conn.execute(
                "INSERT INTO public.document_chunks (document_id, ord, text, vector_id)"
                " SELECT doc.id, o, 'chunk ' || o || ' of document ' || doc.id || ': '"
                "   || substr(doc.body, 1, 120),"
                "   md5(%(seed)s || 'v' || doc.id || '/' || o)::uuid"
                " FROM public.documents doc, generate_series(1, %(chunks)s) o ORDER BY doc.id, o",
                params,
            )
            conn.execute(
                "INSERT INTO public.audit_log (at, actor, action, detail)"
                " SELECT doc.created_at, 'user:' || doc.owner_id, 'document.create',"
                "   jsonb_build_object('document_id', doc.id, 'title', doc.title)"
                " FROM public.documents doc ORDER BY doc.id",
                params,
            )
        tables = ("users", "documents", "document_chunks", "audit_log")
        found: dict[str, int] = {}
        for table in tables:
            counted = conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()
            found[table] = int(counted[0]) if counted else 0
        conn.execute("VACUUM ANALYZE")  # a settled database, as after normal operation
    return found


def _example_path(settings: Settings) -> None:
    for extra in [*settings.python_path, REPO_ROOT / "examples" / "app"]:
        if str(extra) not in sys.path:
            sys.path.insert(0, str(extra))


def seed_redis(settings: Settings, sessions: int, seed: int) -> dict[str, int]:
    """Sessions and cache entries through ``notes_app.seed_redis`` (v1 layout)."""
    import redis

    _example_path(settings)
    from notes_app.seed_redis import seed_sessions

    client = redis.Redis.from_url(settings.redis_url())
    try:
        return dict(seed_sessions(client, sessions, seed=seed))
    finally:
        client.close()


def seed_qdrant(settings: Settings, vectors: int, seed: int) -> dict[str, Any]:
    """The ``documents`` collection through ``notes_app.seed_qdrant`` (v1 layout)."""
    from qdrant_client import QdrantClient

    _example_path(settings)
    from notes_app.seed_qdrant import seed_documents

    url, path, api_key = settings.qdrant_location()
    client = QdrantClient(url=url, api_key=api_key) if url else QdrantClient(path=str(path))
    try:
        collection = seed_documents(client, vectors, seed=seed)
        return {"collection": collection, "points": client.count(collection, exact=True).count}
    finally:
        client.close()


def configured(settings: Settings) -> list[str]:
    found = ["postgres"]
    redis_section = settings.raw.redis
    if redis_section is not None and settings.env.get(redis_section.url_env):
        found.append("redis")
    if settings.raw.qdrant is not None:
        found.append("qdrant")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="releasegate.toml (default: RELEASEGATE_CONFIG or ./)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--docs-per-user", type=int, default=2)
    parser.add_argument("--chunks-per-doc", type=int, default=3)
    parser.add_argument("--sessions", type=int, help="Redis sessions (default: --users)")
    parser.add_argument("--vectors", type=int, help="Qdrant points (default: --users)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stores", help="comma-separated subset of postgres,redis,qdrant (default: configured)"
    )
    parser.add_argument("--migrate-to", metavar="REV", help="migrate Postgres to REV first")
    args = parser.parse_args(argv)
    try:
        settings = load_config(args.config)
        stores = configured(settings)
        if args.stores:
            wanted = [s.strip() for s in args.stores.split(",") if s.strip()]
            unknown = [s for s in wanted if s not in STORES]
            if unknown:
                raise ConfigError(f"unknown store(s) {', '.join(unknown)}")
            stores = [s for s in STORES if s in wanted]
        report: dict[str, Any] = {}
        if args.migrate_to and "postgres" in stores:
            from releasegate.migrations.commands import up

            up(settings, args.migrate_to)
        for store in stores:
            started = time.monotonic()
            if store == "postgres":
                report[store] = seed_postgres(
                    settings.postgres_url(),
                    users=args.users,
                    docs_per_user=args.docs_per_user,
                    chunks_per_doc=args.chunks_per_doc,
                    seed=args.seed,
                )
            elif store == "redis":
                report[store] = seed_redis(settings, args.sessions or args.users, args.seed)
            else:
                report[store] = seed_qdrant(settings, args.vectors or args.users, args.seed)
            report[store]["seconds"] = round(time.monotonic() - started, 2)
    except ReleasegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
