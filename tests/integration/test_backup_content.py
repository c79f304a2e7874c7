"""Content comparisons of live stores against a backup set, on the real services.

A set is taken; then rows, keys and points are inserted, updated and deleted (and a column
added or dropped); the comparison must report exactly those items. Postgres: the example
project migrated and seeded in a fresh database, plus a table without a primary key.
Redis: a flushed logical database. Qdrant: embedded storage in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import redis
from conftest import REPO_ROOT, Project

from releasegate.backup import content, postgres, set_create, sets
from releasegate.backup.base import FileEntry, StoreBackup, sha256_file
from releasegate.backup.content_postgres import ROWS_FILE, RowsFile
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError
from releasegate.migrations.commands import up

NOT_KEYED = ("public.alembic_version", "public.events")
TABLES = 6  # users, documents, document_chunks, audit_log, events, pairs
USERS = 30  # documents: 2 per user, chunks: 2 per document, audit_log: 1 per document


def load_seed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rg_seed", REPO_ROOT / "scripts" / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def scope(diff: content.ContentDiff, name: str) -> dict[str, Any]:
    found = {s.scope: s.to_dict() for s in diff.scopes}
    return found[name]


def counts(diff: content.ContentDiff, name: str) -> tuple[int, int, int, int]:
    s = scope(diff, name)
    return (s["kept_unchanged"], s["changed"], s["missing"], s["added"])


@pytest.fixture
def seeded(project: Project) -> Project:
    """The example project at head, seeded, with a table without a primary key."""
    up(project.settings())
    load_seed().seed_postgres(project.url, users=USERS, docs_per_user=2, chunks_per_doc=2)
    execute(
        project.url,
        "CREATE TABLE public.events (kind text, n int, at timestamptz)",
        "INSERT INTO public.events VALUES ('a', 1, '2026-01-01 10:00+02'),"
        " ('a', 1, '2026-01-01 10:00+02'), ('b', 2, NULL), ('c', 3, now())",
        "CREATE TABLE public.pairs (a int, b text, note text, PRIMARY KEY (a, b))",
        "INSERT INTO public.pairs VALUES (1, 'x y', 'n'), (1, 'z', 'n'), (2, 'x', 'n')",
    )
    return project


def backup_postgres(project: Project, set_dir: Path) -> tuple[Settings, StoreBackup]:
    settings = project.settings()
    return settings, postgres.backup(settings, set_dir)


# -- Postgres ------------------------------------------------------------------------------


def test_postgres_fingerprints_are_listed_and_read_in_the_snapshot(
    seeded: Project, tmp_path: Path
) -> None:
    set_dir = tmp_path / "set"
    settings, entry = backup_postgres(seeded, set_dir)

    assert [f.name for f in entry.files] == ["postgres.dump", ROWS_FILE]
    rows = next(f for f in entry.files if f.name == ROWS_FILE)
    assert rows.sha256 == sha256_file(set_dir / ROWS_FILE)
    assert entry.extra["fingerprints"]["tables"] == TABLES  # alembic_version is left out
    keyed_rows = sum(n for t, n in entry.counts["tables"].items() if t not in NOT_KEYED)
    assert entry.extra["fingerprints"]["lines"] == keyed_rows + 3  # events: 3 distinct rows
    assert "fingerprints" in entry.timings
    with RowsFile(set_dir / ROWS_FILE) as reader:
        sections = {s.table.qualified: (s.table, list(s.rows())) for s in reader.sections()}
    assert list(sections) == sorted(sections)
    users, user_rows = sections["public.users"]
    assert users.key == ("id",)
    assert users.columns[:2] == ("id", "email")
    assert len(user_rows) == USERS == entry.counts["tables"]["public.users"]
    assert [k for k, _d in user_rows] == sorted(str(i).encode() for i in range(1, USERS + 1))
    events, event_rows = sections["public.events"]
    assert events.key == ()
    assert sorted(n for _d, n in event_rows) == [1, 1, 2]  # the duplicate row counted twice

    # Unchanged database: every row kept, whatever this session's time zone.
    with psycopg.connect(seeded.url, autocommit=True) as conn:
        conn.execute("ALTER DATABASE " + conn.info.dbname + " SET TimeZone = 'Asia/Tokyo'")
    diff = content.compare_postgres(settings, set_dir, entry)
    assert diff.preserved, content.describe(diff)
    assert counts(diff, "public.users") == (USERS, 0, 0, 0)
    assert counts(diff, "public.events") == (4, 0, 0, 0)
    assert diff.total("kept_unchanged") == sum(
        n for t, n in entry.counts["tables"].items() if t != "public.alembic_version"
    )


def test_postgres_compare_reports_each_kind_of_change(seeded: Project, tmp_path: Path) -> None:
    set_dir = tmp_path / "set"
    settings, entry = backup_postgres(seeded, set_dir)
    execute(
        seeded.url,
        # 3 users added; documents 5 and 9 changed; chunks 4, 7, 8 deleted.
        "INSERT INTO public.users (email, display_name)"
        " SELECT 'new' || g || '@example.com', 'New' FROM generate_series(1, 3) g",
        "UPDATE public.documents SET title = title || ' (edited)' WHERE id IN (5, 9)",
        "DELETE FROM public.document_chunks WHERE id IN (4, 7, 8)",
        # A column added since the backup does not make rows differ.
        "ALTER TABLE public.documents ADD COLUMN pinned boolean NOT NULL DEFAULT false",
        "UPDATE public.audit_log SET actor = actor WHERE id = 1",  # rewritten, same content
        # Without a key: one more 'a' row, the 'b' row gone, 'c' changed into 'd'.
        "INSERT INTO public.events VALUES ('a', 1, '2026-01-01 08:00+00')",
        "DELETE FROM public.events WHERE kind = 'b'",
        "UPDATE public.events SET kind = 'd' WHERE kind = 'c'",
        "CREATE TABLE public.tags (name text PRIMARY KEY)",
        "INSERT INTO public.tags VALUES ('x'), ('y')",
        "UPDATE public.pairs SET note = 'changed' WHERE a = 1 AND b = 'x y'",
    )

    diff = content.compare_postgres(settings, set_dir, entry)

    assert not diff.preserved
    assert counts(diff, "public.users") == (USERS, 0, 0, 3)
    assert scope(diff, "public.users")["examples"] == {
        "added": [str(USERS + 1), str(USERS + 2), str(USERS + 3)]
    }
    assert counts(diff, "public.documents") == (2 * USERS - 2, 2, 0, 0)
    assert scope(diff, "public.documents")["examples"] == {"changed": ["5", "9"]}
    assert counts(diff, "public.document_chunks") == (4 * USERS - 3, 0, 3, 0)
    assert scope(diff, "public.document_chunks")["examples"] == {"missing": ["4", "7", "8"]}
    assert counts(diff, "public.audit_log") == (2 * USERS, 0, 0, 0)
    assert counts(diff, "public.events") == (2, 0, 2, 2)  # 'a' x2 kept; 'b', 'c' gone
    assert counts(diff, "public.pairs") == (2, 1, 0, 0)
    assert scope(diff, "public.pairs")["examples"] == {"changed": ['(1,"x y")']}
    assert counts(diff, "public.tags") == (0, 0, 0, 2)
    assert scope(diff, "public.tags")["examples"] == {"added": ["x", "y"]}
    lines = content.describe(diff)
    assert "postgres public.documents: 58 kept, 2 changed, 0 missing, 0 added" in lines
    assert "  changed: 5, 9" in lines
    as_json = json.loads(json.dumps(diff.to_dict()))
    assert as_json["totals"]["missing"] == 5 and as_json["preserved"] is False


def test_postgres_dropped_column_and_accepted_migration(seeded: Project, tmp_path: Path) -> None:
    # Three users without documents (ids 31..33), so that they can be deleted alone.
    execute(
        seeded.url,
        "INSERT INTO public.users (email) SELECT 'solo' || g || '@example.com'"
        " FROM generate_series(1, 3) g",
    )
    total = USERS + 3
    set_dir = tmp_path / "set"
    settings, entry = backup_postgres(seeded, set_dir)
    # An irreversible migration: display_name dropped, user 31 removed by it.
    execute(
        seeded.url,
        "ALTER TABLE public.users DROP COLUMN display_name",
        f"DELETE FROM public.users WHERE id = {USERS + 1}",
        "ALTER TABLE public.events DROP COLUMN at",
        "ALTER TABLE public.pairs DROP COLUMN b",  # and with it the primary key
    )
    diff = content.compare_postgres(settings, set_dir, entry)
    assert counts(diff, "public.pairs") == (0, 0, 3, 3)
    assert counts(diff, "public.users") == (0, total - 1, 1, 0)
    assert counts(diff, "public.events") == (0, 4, 0, 0)

    after = content.take_postgres_fingerprints(settings, tmp_path / "after" / ROWS_FILE)
    # Then the service writes: user 3 changed, user 32 deleted, one user added.
    execute(
        seeded.url,
        "UPDATE public.users SET email = 'changed@example.com' WHERE id = 3",
        f"DELETE FROM public.users WHERE id = {USERS + 2}",
        "INSERT INTO public.users (email) VALUES ('late@example.com')",
    )
    accepted = content.compare_postgres(settings, set_dir, entry, also_accept=after)
    users = scope(accepted, "public.users")
    # As the migration left them: all but users 3 and 32, and user 31 that it removed.
    assert (users["accepted"], users["changed"], users["missing"], users["added"]) == (
        total - 2,
        1,
        1,
        1,
    )
    assert users["examples"]["changed"] == ["3"]
    assert users["examples"]["missing"] == [str(USERS + 2)]
    assert users["examples"]["added"] == [str(USERS + 4)]
    assert scope(accepted, "public.events")["accepted"] == 4
    assert counts(accepted, "public.documents") == (2 * USERS, 0, 0, 0)
    assert any("as after the migration" in line for line in content.describe(accepted))


def test_postgres_without_fingerprints_and_damaged_file(seeded: Project, tmp_path: Path) -> None:
    seeded.write_config(seeded.config_path.read_text() + "\n[backup]\nfingerprints = false\n")
    settings, entry = backup_postgres(seeded, tmp_path / "plain")
    assert [f.name for f in entry.files] == ["postgres.dump"]
    with pytest.raises(ConfigError, match="no row fingerprints"):
        content.compare_postgres(settings, tmp_path / "plain", entry)

    seeded.write_config(seeded.config_path.read_text().replace("false", "true"))
    set_dir = tmp_path / "set"
    settings, entry = backup_postgres(seeded, set_dir)
    path = set_dir / ROWS_FILE
    text = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(text[: len(text) // 2]))  # cut short, still gzip
    with pytest.raises(CheckFailed, match="does not match its checksum"):
        content.compare_postgres(settings, set_dir, entry)
    # A file that matches its (rewritten) checksum but is cut mid-line: the comparison
    # stops with the damage while a live COPY is open, and the connection is let go.
    entry.files = [f for f in entry.files if f.name != ROWS_FILE]
    entry.files.append(FileEntry.of(set_dir, path))
    with pytest.raises(CheckFailed, match="damaged"):
        content.compare_postgres(settings, set_dir, entry)


# -- Redis ---------------------------------------------------------------------------------

SESSIONS = 20


def with_redis(project: Project, redis_url: str) -> Settings:
    project.write_config(
        project.config_path.read_text()
        + '\n[redis]\nurl_env = "NOTES_REDIS_URL"\n'
        + 'patterns = ["sess:*", "cache:*", "data:*"]\nvolatile_patterns = ["cache:*"]\n'
    )
    settings: Settings = project.settings(NOTES_REDIS_URL=redis_url)
    return settings


def test_redis_compare_by_value(project: Project, redis_url: str, tmp_path: Path) -> None:
    from releasegate.backup import redis as redis_backup

    settings = with_redis(project, redis_url)
    client = redis.Redis.from_url(redis_url)
    for i in range(1, SESSIONS + 1):
        client.set(f"sess:{i}", f"user {i}")
    client.set("sess:short", "soon gone", px=400)
    for i in range(1, 6):
        client.set(f"cache:{i}", f"cached {i}")
    client.hset("data:hash", mapping={"a": "1", "b": "2"})
    client.hset("data:big", mapping={"a": "1", "b": "2"})
    client.sadd("data:set", "x", "y", "z")
    client.zadd("data:zset", {"x": 1.5, "y": 2})
    client.rpush("data:list", "1", "2", "3")
    client.xadd("data:stream", {"f": "v"}, id="1-1")
    client.set("other:key", "outside the patterns")
    set_dir = tmp_path / "set"
    entry = redis_backup.backup(settings, set_dir)
    compact = client.dump("data:big")

    client.set("sess:1", "someone else")  # changed
    client.delete("sess:2")  # missing
    client.set("sess:new", "written during the release")  # added
    client.hset("data:hash", "b", "3")  # changed
    client.delete("data:list")
    client.set("data:list", "now a string")  # changed (type)
    # The same value in another encoding: listpack -> hashtable, then back to two fields.
    client.hset("data:big", "c", "v" * 200)
    client.hdel("data:big", "c")
    assert client.dump("data:big") != compact
    client.delete("cache:1")  # volatile: neither missing...
    client.set("cache:2", "other")  # ...nor changed
    client.set("cache:new", "x")  # ...nor added
    client.set("other:new", "outside the patterns")
    time.sleep(0.5)  # sess:short expires

    diff = content.compare_redis(settings, set_dir, entry)

    sess = scope(diff, "sess:*")
    assert counts(diff, "sess:*") == (SESSIONS - 2, 1, 1, 1)
    assert sess["expired"] == 1 and sess["examples"]["expired"] == ["sess:short"]
    assert sess["examples"]["changed"] == ["sess:1"]
    assert sess["examples"]["missing"] == ["sess:2"]
    assert sess["examples"]["added"] == ["sess:new"]
    data = scope(diff, "data:*")
    assert counts(diff, "data:*") == (4, 2, 0, 0)
    assert sorted(data["examples"]["changed"]) == ["data:hash", "data:list"]
    cache = scope(diff, "cache:*")
    assert counts(diff, "cache:*") == (0, 0, 0, 0) and cache["volatile"] == 5
    assert not diff.preserved
    assert "redis sess:*: 18 kept, 1 changed, 1 missing, 1 added, 1 expired" in (
        content.describe(diff)
    )
    # The scratch copies are gone again.
    assert not [k for k in client.scan_iter("releasegate:verify:*")]

    # Put the changed and missing keys back: the set is preserved, additions allowed.
    client.set("sess:1", "user 1")
    client.set("sess:2", "user 2")
    client.hset("data:hash", "b", "2")
    client.delete("data:list")
    client.rpush("data:list", "1", "2", "3")
    again = content.compare_redis(settings, set_dir, entry)
    assert again.preserved, content.describe(again)
    assert again.total("added") == 1
    client.close()


# -- Qdrant --------------------------------------------------------------------------------

POINTS = 20


def test_qdrant_compare_by_point(project: Project, qdrant_path: Path, tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    from releasegate.backup import qdrant as qdrant_backup

    client = QdrantClient(path=str(qdrant_path))
    client.create_collection(
        "docs__v1", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
    )
    client.update_collection_aliases(
        change_aliases_operations=[
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name="docs__v1", alias_name="docs")
            )
        ]
    )
    client.create_collection(
        "notes", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
    )

    def point(i: int, scale: float = 1.0) -> models.PointStruct:
        vector = [scale * x for x in (i, 1.0, 0.5, 0.25)]
        return models.PointStruct(id=i, vector=vector, payload={"n": i, "tags": ["a", str(i)]})

    client.upsert("docs__v1", [point(i) for i in range(1, POINTS + 1)])
    client.upsert("notes", [models.PointStruct(id=1, vector=[1.0, 2.0], payload={})])
    client.close()
    project.write_config(project.config_path.read_text() + f'\n[qdrant]\npath = "{qdrant_path}"\n')
    settings: Settings = project.settings()
    set_dir = tmp_path / "set"
    entry = qdrant_backup.backup(settings, set_dir)

    client = QdrantClient(path=str(qdrant_path))
    client.set_payload("docs__v1", {"n": -1}, points=[1])  # changed payload
    turned = models.PointStruct(
        id=2, vector=[0.0, 1.0, 0.0, 0.0], payload={"n": 2, "tags": ["a", "2"]}
    )
    client.upsert("docs__v1", [turned])  # changed vector
    client.upsert("docs__v1", [point(4, scale=2.0)])  # same direction: equal for cosine
    client.delete("docs__v1", points_selector=[3])  # missing
    client.upsert("docs__v1", [point(POINTS + 1)])  # added
    client.create_collection(
        "later", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
    )
    client.upsert("later", [models.PointStruct(id=7, vector=[1.0, 0.0], payload={})])
    client.close()

    diff = content.compare_qdrant(settings, set_dir, entry)

    assert counts(diff, "docs") == (POINTS - 4 + 1, 2, 1, 1)
    docs = scope(diff, "docs")
    assert docs["examples"] == {"changed": ["1", "2"], "missing": ["3"], "added": ["21"]}
    assert counts(diff, "notes") == (1, 0, 0, 0)
    assert counts(diff, "later") == (0, 0, 0, 1)
    assert not diff.preserved
    assert "qdrant docs: 17 kept, 2 changed, 1 missing, 1 added" in content.describe(diff)


def test_sets_create_lists_fingerprints_and_verify_checks_them(
    seeded: Project, tmp_path: Path
) -> None:
    seeded.write_config(seeded.config_path.read_text() + '\n[backup]\ndir = "backups"\n')
    settings = seeded.settings()
    manifest = set_create.create(settings)
    set_dir = seeded.root / "backups" / manifest.set_id
    entry = manifest.store("postgres")
    assert entry is not None and ROWS_FILE in [f.name for f in entry.files]
    assert content.fingerprint_file(set_dir, entry) == set_dir / ROWS_FILE
    assert sets.verify(settings, manifest.set_id).ok

    path = set_dir / ROWS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = sets.verify(settings, manifest.set_id)
    assert [(d.store, d.item) for d in result.damaged] == [("postgres", f"file {ROWS_FILE}")]
