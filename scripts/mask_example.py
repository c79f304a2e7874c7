"""Mask the personal data of the example notes service in a scratch copy of its stores.

The masking hook of the sanitized-seed recipe in docs/own-service.md: restore a
production backup set into scratch stores, run this, take a new backup set of them.
Never run it on production. It reads the stores as releasegate does (releasegate.toml
and the environment: NOTES_DATABASE_URL, NOTES_REDIS_URL, QDRANT_URL or qdrant.path)
and runs only when ``--database`` names the database that URL points at::

    .venv/bin/python scripts/mask_example.py --database notes_scrub

- **Postgres**, in one transaction: each user's email becomes ``user<id>@example.invalid``
  and their name ``User <id>``; each document's title ``Document <id>``; bodies and chunk
  texts become filler of the same length, so the data keeps its size; the titles copied
  into the audit log follow. Ids, references, timestamps and row counts stay as they are.
  Columns are looked up, so every revision of the schema is handled.
- **Redis**: every key of ``redis.patterns`` is deleted. The notes service keeps only
  sessions (bearer credentials: never copied) and caches (rendered documents) there.
- **Qdrant**: each point of the ``documents`` collection gets its masked title, and its
  vector is embedded again from that title, since a vector can give its text away.

Prints one JSON object: what was masked per store. Exit codes are releasegate's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from releasegate import db
from releasegate.config import Settings, load_config
from releasegate.errors import ConfigError, ReleasegateError

FILLER = "lorem ipsum "
COLLECTION = "documents"


def _columns(conn: Any, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    ).fetchall()
    return {r[0] for r in rows}


def mask_postgres(url: str, database: str) -> dict[str, int]:
    """Mask the notes tables of ``database`` (which ``url`` must point at); rows per table."""
    with db.connect(url, "mask") as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        actual = row[0] if row else None
        if actual != database:
            raise ConfigError(
                f"--database {database} is not the database of the URL ({actual}):"
                " point the URL at the scratch copy"
            )
        user_columns = _columns(conn, "users")
        if not user_columns:
            raise ConfigError(f"{database} has no users table: restore a notes backup set first")
        names = [
            f"{column} = CASE WHEN {column} IS NULL THEN NULL ELSE 'User ' || id END"
            for column in ("display_name", "full_name")
            if column in user_columns
        ]
        statements = {
            "users": "UPDATE public.users SET "
            + ", ".join(["email = 'user' || id || '@example.invalid'", *names]),
            "documents": "UPDATE public.documents SET title = 'Document ' || id,"
            " body = rpad('', length(body), %(filler)s)",
            "document_chunks": "UPDATE public.document_chunks"
            " SET text = rpad('', length(text), %(filler)s)",
            "audit_log": "UPDATE public.audit_log SET detail = jsonb_set(detail, '{title}',"
            " to_jsonb('Document ' || coalesce(detail->>'document_id', '?')))"
            " WHERE detail ? 'title'",
        }
        masked = {}
        with conn.transaction():
            for table, statement in statements.items():
                masked[table] = conn.execute(statement, {"filler": FILLER}).rowcount
    return masked


def mask_redis(settings: Settings) -> dict[str, int]:
    """Delete every key of ``redis.patterns``; how many were deleted."""
    import redis

    assert settings.raw.redis is not None
    client = redis.Redis.from_url(settings.redis_url())
    deleted = 0
    try:
        for pattern in settings.raw.redis.patterns:
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    deleted += int(client.delete(*batch))
                    batch = []
            if batch:
                deleted += int(client.delete(*batch))
    finally:
        client.close()
    return {"deleted_keys": deleted}


def mask_qdrant(settings: Settings) -> dict[str, int]:
    """Mask the title of every point of ``documents`` and embed its vector again."""
    from qdrant_client import QdrantClient, models

    for extra in settings.python_path:
        if str(extra) not in sys.path:
            sys.path.insert(0, str(extra))
    from notes_app.embedding import embed

    url, path, api_key = settings.qdrant_location()
    client = QdrantClient(url=url, api_key=api_key) if url else QdrantClient(path=str(path))
    masked = 0
    try:
        if not client.collection_exists(COLLECTION):
            return {"points": 0}
        vectors = client.get_collection(COLLECTION).config.params.vectors
        assert isinstance(vectors, models.VectorParams)  # the example's unnamed vector
        offset: Any = None
        while True:
            found, offset = client.scroll(COLLECTION, limit=256, offset=offset, with_payload=True)
            points = []
            for point in found:
                payload = dict(point.payload or {})
                payload["title"] = f"Document {payload.get('document_id', point.id)}"
                vector = embed(payload["title"], vectors.size)
                points.append(models.PointStruct(id=point.id, vector=vector, payload=payload))
            if points:
                client.upsert(COLLECTION, points=points, wait=True)
                masked += len(points)
            if offset is None:
                break
    finally:
        client.close()
    return {"points": masked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="releasegate.toml (default: RELEASEGATE_CONFIG or ./)")
    parser.add_argument(
        "--database", required=True, help="name of the scratch database (a check of the URL)"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_config(args.config)
        report: dict[str, Any] = {"postgres": mask_postgres(settings.postgres_url(), args.database)}
        redis_section = settings.raw.redis
        if redis_section is not None and settings.env.get(redis_section.url_env):
            report["redis"] = mask_redis(settings)
        if settings.raw.qdrant is not None:
            report["qdrant"] = mask_qdrant(settings)
    except ReleasegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
