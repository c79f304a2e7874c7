"""The sanitized-seed recipe of docs/own-service.md, run as written on real stores.

"Production" (a database, a Redis database and an embedded Qdrant, seeded with
scripts/seed.py's data) is backed up with ``releasegate backup create``; the set is
restored into scratch stores with ``releasegate backup restore --yes``;
scripts/mask_example.py masks them; a new set is taken and restored into "staging",
as the staging workflow's ``seed`` input does. Staging must hold the same rows, ids and
sizes, and nothing personal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from conftest import REPO_ROOT, create_database, drop_database, url_for_database
from qdrant_client import QdrantClient

sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT / "examples" / "app"))

from notes_app.embedding import embed
from seed import seed_postgres, seed_qdrant, seed_redis

from releasegate.config import load_config

RELEASEGATE = Path(sys.executable).parent / "releasegate"
MASK = REPO_ROOT / "scripts" / "mask_example.py"
USERS = 30


class Stores:
    """One place of the recipe: a database, a Redis database and a Qdrant folder."""

    def __init__(self, name: str, db_url: str, redis_url: str, tmp_path: Path) -> None:
        self.name = name
        self.db_url = db_url
        self.redis_url = redis_url
        self.qdrant_path = tmp_path / f"qdrant-{name}"

    def env(self, tmp_path: Path, service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASEGATE_")}
        env.pop("QDRANT_URL", None)
        return {
            **env,
            "RELEASEGATE_CONFIG": str(REPO_ROOT / "releasegate.toml"),
            "RELEASEGATE_SERVICE__NAME": service,
            "RELEASEGATE_BACKUP__DIR": str(tmp_path / f"backups-{self.name}"),
            "RELEASEGATE_QDRANT__PATH": str(self.qdrant_path),
            "NOTES_DATABASE_URL": self.db_url,
            "NOTES_REDIS_URL": self.redis_url,
        }


def run(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command), capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"
    return result


def backup(env: dict[str, str]) -> str:
    created = run(env, str(RELEASEGATE), "backup", "create", "--json")
    return str(json.loads(created.stdout)["path"])


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture
def places(
    pg_server_url: str, redis_server_url: str, tmp_path: Path
) -> Any:  # an iterator of the three places
    base = redis_server_url.rsplit("/", 1)[0]
    names = {}
    found = []
    try:
        # Redis databases 60-62: the conftest's redis_url fixture hands out 1..59 first.
        for index, place in enumerate(("production", "scratch", "staging")):
            names[place] = create_database(pg_server_url, prefix=f"rgmask_{place[:4]}")
            redis_url = f"{base}/{60 + index}"
            redis.Redis.from_url(redis_url).flushdb()
            found.append(
                Stores(place, url_for_database(pg_server_url, names[place]), redis_url, tmp_path)
            )
        yield found
    finally:
        for stores in found:
            redis.Redis.from_url(stores.redis_url).flushdb()
        for name in names.values():
            drop_database(pg_server_url, name)


def test_the_recipe_gives_staging_the_same_data_without_anything_personal(
    places: list[Stores], tmp_path: Path
) -> None:
    production, scratch, staging = places
    service = f"rgmask-{os.getpid()}"
    prod_env = production.env(tmp_path, service)
    run(prod_env, str(RELEASEGATE), "migrate", "up", "--store", "postgres")
    settings = load_config(None, prod_env)
    seed_postgres(production.db_url, users=USERS)
    seed_redis(settings, USERS, 0)
    seed_qdrant(settings, USERS, 0)
    emails = {r[0] for r in rows(production.db_url, "SELECT email FROM users")}
    titles = {r[0] for r in rows(production.db_url, "SELECT title FROM documents")}
    sizes = rows(production.db_url, "SELECT id, length(body) FROM documents ORDER BY id")
    production_set = backup(prod_env)

    # The recipe: restore into scratch stores, mask, back up again.
    scratch_env = scratch.env(tmp_path, service)
    run(scratch_env, str(RELEASEGATE), "backup", "restore", production_set, "--yes")
    refused = subprocess.run(
        [sys.executable, str(MASK), "--database", "notes_production"],
        capture_output=True,
        text=True,
        env=scratch_env,
        check=False,
    )
    assert refused.returncode == 2 and refused.stderr.startswith("error: --database")
    scratch_name = scratch.db_url.rsplit("/")[-1]
    masked = run(scratch_env, sys.executable, str(MASK), "--database", scratch_name)
    report = json.loads(masked.stdout)
    assert report["postgres"]["users"] == USERS
    assert report["redis"]["deleted_keys"] > USERS  # the sessions and their caches
    assert report["qdrant"] == {"points": USERS}
    sanitized_set = backup(scratch_env)
    committed = tmp_path / "repo" / "seeds" / "sanitized-latest"
    shutil.copytree(sanitized_set, committed)

    # Staging, as the staging workflow's seed input restores it.
    staging_env = staging.env(tmp_path, service)
    run(staging_env, str(RELEASEGATE), "backup", "restore", str(committed), "--yes")
    users = rows(staging.db_url, "SELECT id, email, display_name FROM users ORDER BY id")
    assert len(users) == USERS
    assert all(email == f"user{uid}@example.invalid" for uid, email, _ in users)
    assert all(name == f"User {uid}" for uid, _, name in users)
    assert not emails & {email for _, email, _ in users}
    documents = rows(staging.db_url, "SELECT id, title, body FROM documents ORDER BY id")
    assert not titles & {title for _, title, _ in documents}
    assert [(i, len(body)) for i, _, body in documents] == sizes  # same sizes, no text
    assert all(set(body.split()) <= {"lorem", "ipsum"} for _, _, body in documents)
    audit = rows(staging.db_url, "SELECT detail->>'title' FROM audit_log")
    assert audit and not titles & {r[0] for r in audit}
    assert (
        rows(staging.db_url, "SELECT count(*) FROM document_chunks WHERE text LIKE 'chunk%'")[0][0]
        == 0
    )
    assert redis.Redis.from_url(staging.redis_url).keys("sess:*") == []
    client = QdrantClient(path=str(staging.qdrant_path))
    try:
        points, _ = client.scroll("documents", limit=USERS + 1, with_vectors=True)
        assert len(points) == USERS
        for point in points:
            assert point.payload is not None
            title = point.payload["title"]
            assert title == f"Document {point.payload['document_id']}"
            assert point.vector == pytest.approx(embed(title, len(point.vector)))  # type: ignore[arg-type]
    finally:
        client.close()
