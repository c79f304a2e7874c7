"""Backup sets across the stores: create, verify, restore, list, prune, damage, a full disk.

Real services only: the example project migrated and seeded in a fresh Postgres database,
a flushed logical Redis database, an embedded Qdrant in ``tmp_path``; the "too little
disk" tests mount a 2 MiB tmpfs as ``backup.dir``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import redis
from conftest import REPO_ROOT, Project
from qdrant_client import QdrantClient

from releasegate.backup import set_create, set_restore, sets
from releasegate.backup.loss import LossReport
from releasegate.backup.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, is_set_id
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ConfigError, ExitCode
from releasegate.ledger import Ledger, Release
from releasegate.migrations.commands import up

USERS = 60
SESSIONS = 150  # plus SESSIONS // 4 cache entries
VECTORS = 40


def load_seed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rg_seed", REPO_ROOT / "scripts" / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Env:
    """The example project with the stores a test asked for."""

    project: Project
    redis_url: str | None = None
    qdrant_path: Path | None = None

    def settings(self, **env: str) -> Settings:
        extra = {"NOTES_REDIS_URL": self.redis_url} if self.redis_url else {}
        settings: Settings = self.project.settings(**{**extra, **env})
        return settings

    @property
    def url(self) -> str:
        return self.project.url

    @property
    def backups(self) -> Path:
        return self.project.root / "backups"


def configure(project: Project, *, redis_on: bool, qdrant: Path | None, backup: str = "") -> None:
    text = project.config_path.read_text()
    if redis_on:
        text += '\n[redis]\nurl_env = "NOTES_REDIS_URL"\n'
    if qdrant is not None:
        text += f'\n[qdrant]\npath = "{qdrant}"\n'
    text += f'\n[backup]\ndir = "backups"\n{backup}'
    project.write_config(text)


def seed(env: Env, users: int = USERS) -> None:
    settings = env.settings()
    up(settings)
    module = load_seed()
    module.seed_postgres(env.url, users=users, docs_per_user=2, chunks_per_doc=2)
    if env.redis_url:
        module.seed_redis(settings, SESSIONS, 0)
    if env.qdrant_path:
        module.seed_qdrant(settings, VECTORS, 0)


@pytest.fixture
def pg_only(project: Project) -> Env:
    configure(project, redis_on=False, qdrant=None)
    env = Env(project)
    seed(env)
    return env


@pytest.fixture
def all_stores(project: Project, redis_url: str, qdrant_path: Path) -> Env:
    configure(project, redis_on=True, qdrant=qdrant_path)
    env = Env(project, redis_url, qdrant_path)
    seed(env)
    return env


def fingerprint(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT u.id, u.email, count(c.id), md5(string_agg(c.text, '|' ORDER BY c.id))"
            " FROM users u JOIN documents d ON d.owner_id = u.id"
            " JOIN document_chunks c ON c.document_id = d.id GROUP BY u.id ORDER BY u.id"
        ).fetchall()


def redis_keys(url: str) -> set[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return set(client.scan_iter(count=1000))
    finally:
        client.close()


def qdrant_points(path: Path) -> dict[str, int]:
    client = QdrantClient(path=str(path))
    try:
        names = [c.name for c in client.get_collections().collections]
        return {n: client.count(n, exact=True).count for n in names}
    finally:
        client.close()


def releases(env: Env) -> list[Release]:
    with Ledger.open(env.url) as ledger:
        return ledger.releases(env.project.service, limit=50, with_events=True)


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    where = len(data) // 2 if offset is None else offset
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


# -- the whole cycle ----------------------------------------------------------------------


def test_create_verify_restore_every_store(all_stores: Env) -> None:
    env = all_stores
    settings = env.settings()
    progress: list[set_create.Progress] = []
    manifest = set_create.create(settings, on_progress=progress.append)

    assert manifest.store_names == ["postgres", "redis", "qdrant"]
    assert [(p.store, p.status) for p in progress] == [
        (s, status) for s in ("postgres", "redis", "qdrant") for status in ("started", "done")
    ]
    assert is_set_id(manifest.set_id)
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.service == env.project.service
    assert manifest.versions["alembic"] == "0006"
    assert set(manifest.versions) == {"alembic", "redis", "qdrant"}
    assert manifest.store("postgres").counts["tables"]["public.users"] == USERS  # type: ignore[union-attr]
    assert manifest.store("redis").counts["keys"] == SESSIONS + SESSIONS // 4  # type: ignore[union-attr]
    set_dir = env.backups / manifest.set_id
    assert sorted(p.name for p in env.backups.iterdir()) == [manifest.set_id]  # no .partial
    assert Manifest.read(set_dir).to_dict() == manifest.to_dict()
    assert sets.check_files(set_dir, manifest, manifest.store_names) == []
    assert {"postgres", "redis", "qdrant", "total"} <= set(manifest.timings)

    backup_release = releases(env)[0]
    assert backup_release.id == manifest.ledger_release_id
    assert (backup_release.kind, backup_release.outcome) == ("backup", "succeeded")
    assert {"backup postgres", "backup redis", "backup qdrant"} <= {
        e.step for e in backup_release.events
    }
    assert backup_release.alembic_after == "0006"
    assert backup_release.summary["set_id"] == manifest.set_id

    verified = sets.verify(settings, "latest")
    assert verified.ok, verified.to_dict()
    assert verified.stores == {"postgres": "ok", "redis": "ok", "qdrant": "ok"}

    # Damage every store, then restore.
    before_pg = fingerprint(env.url)
    assert env.redis_url and env.qdrant_path
    before_keys = redis_keys(env.redis_url)
    before_points = qdrant_points(env.qdrant_path)
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute("DELETE FROM document_chunks WHERE id % 2 = 0")
    client = redis.Redis.from_url(env.redis_url)
    client.delete(*sorted(before_keys)[:20])
    client.close()
    qclient = QdrantClient(path=str(env.qdrant_path))
    qclient.delete("documents__v1", points_selector=list(range(1, 11)))
    qclient.close()

    reports: list[LossReport] = []
    with pytest.raises(ConfigError) as refused:
        set_restore.restore(settings, manifest.set_id, on_report=reports.append)
    assert "nothing changed" in str(refused.value) and "--yes" in str(refused.value)
    assert refused.value.exit_code == ExitCode.USAGE
    assert fingerprint(env.url) != before_pg  # untouched
    assert list(reports[0].stores) == ["postgres", "redis", "qdrant"]
    assert reports[0].live_color is None and "not running" in reports[0].router

    result = set_restore.restore(settings, manifest.set_id, yes=True)
    assert list(result.stores) == ["postgres", "redis", "qdrant"]
    assert fingerprint(env.url) == before_pg
    assert redis_keys(env.redis_url) == before_keys
    assert qdrant_points(env.qdrant_path) == before_points
    assert result.versions_after["alembic"] == "0006"

    restore_release = releases(env)[0]
    assert restore_release.id == result.release_id
    assert (restore_release.kind, restore_release.outcome) == ("restore", "succeeded")
    assert (restore_release.alembic_before, restore_release.alembic_after) == ("0006", "0006")
    steps = [e.step for e in restore_release.events]
    assert steps == ["lock", "restore qdrant", "restore redis", "restore postgres"]
    assert releases(env)[1].kind == "backup"  # the refused restore recorded nothing


def test_restore_a_subset_and_skip_unconfigured_stores(project: Project, redis_url: str) -> None:
    configure(project, redis_on=True, qdrant=None)
    env = Env(project, redis_url)
    seed(env)
    manifest = set_create.create(env.settings(), stores=["postgres", "redis"])
    assert manifest.store_names == ["postgres", "redis"]
    client = redis.Redis.from_url(redis_url)
    client.set("added-after-backup", "1")
    client.close()

    only_pg = set_restore.restore(env.settings(), "latest", stores=["postgres"], yes=True)
    assert list(only_pg.stores) == ["postgres"]
    assert b"added-after-backup" in redis_keys(redis_url)  # Redis untouched

    without_redis = set_restore.restore(Env(project).settings(), "latest", yes=True)
    assert list(without_redis.stores) == ["postgres"]
    assert without_redis.skipped == {
        "redis": "environment variable NOTES_REDIS_URL (redis.url_env) is not set"
    }
    with pytest.raises(ConfigError, match="holds no qdrant backup"):
        set_restore.restore(env.settings(), "latest", stores=["qdrant"])


# -- damage -------------------------------------------------------------------------------


def test_a_corrupt_file_fails_verify_and_restore_restores_nothing(
    project: Project, redis_url: str
) -> None:
    configure(project, redis_on=True, qdrant=None)
    env = Env(project, redis_url)
    seed(env)
    manifest = set_create.create(env.settings())
    set_dir = env.backups / manifest.set_id
    flip_byte(set_dir / "postgres.dump")

    result = sets.verify(env.settings(), manifest.set_id)
    assert not result.ok
    assert [(d.store, d.item) for d in result.damaged] == [("postgres", "file postgres.dump")]
    assert result.differences == []
    assert result.stores == {
        "postgres": "damaged files",
        "redis": "not checked: the set is damaged",
    }

    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute("UPDATE users SET display_name = 'after the backup' WHERE id = 1")
    releases_before = len(releases(env))
    with pytest.raises(CheckFailed) as damaged:
        set_restore.restore(env.settings(), manifest.set_id, yes=True)
    assert str(damaged.value).startswith(
        f"backup set {manifest.set_id} is damaged, nothing restored: postgres file postgres.dump"
    )
    with psycopg.connect(env.url) as conn:
        row = conn.execute("SELECT display_name FROM users WHERE id = 1").fetchone()
    assert row == ("after the backup",)
    assert len(releases(env)) == releases_before

    # A truncated Redis file is caught by its size, and both files are listed.
    dump = set_dir / "redis.rgdump"
    dump.write_bytes(dump.read_bytes()[:-10])
    again = sets.verify(env.settings(), str(set_dir))
    assert [d.item for d in again.damaged] == ["file postgres.dump", "file redis.rgdump"]
    assert again.damaged[1].actual == f"{dump.stat().st_size} bytes"


def test_a_newer_manifest_format_is_refused_plainly(pg_only: Env) -> None:
    manifest = set_create.create(pg_only.settings())
    path = pg_only.backups / manifest.set_id / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    expected = (
        f"manifest format {FORMAT_VERSION + 1} is newer than this releasegate supports"
        f" ({FORMAT_VERSION}): upgrade releasegate"
    )

    for call in (sets.verify, set_restore.restore):
        with pytest.raises(ConfigError) as refused:
            call(pg_only.settings(), manifest.set_id)
        assert str(refused.value) == expected
        assert refused.value.exit_code == ExitCode.USAGE
    listed = sets.list_sets(pg_only.settings())
    assert [(s.set_id, s.manifest, s.problem) for s in listed] == [
        (manifest.set_id, None, expected)
    ]
    with pytest.raises(ConfigError, match="no backup sets in"):
        sets.resolve_set(pg_only.settings(), "latest")


def test_a_set_of_another_service_is_refused(pg_only: Env) -> None:
    manifest = set_create.create(pg_only.settings())
    path = pg_only.backups / manifest.set_id / MANIFEST_NAME
    path.write_text(path.read_text().replace(pg_only.project.service, "someone-else"))
    with pytest.raises(ConfigError, match="belongs to service 'someone-else'"):
        set_restore.restore(pg_only.settings(), manifest.set_id)


# -- list and prune -----------------------------------------------------------------------


def test_list_resolve_and_prune(pg_only: Env) -> None:
    settings = pg_only.settings()
    created = [set_create.create(settings).set_id for _ in range(3)]
    leftover = pg_only.backups / ".20200101T000000.000Z.partial"
    leftover.mkdir()
    (pg_only.backups / "notes.txt").write_text("not a set")

    listed = sets.list_sets(settings)
    assert [s.set_id for s in listed] == sorted(created, reverse=True)
    assert all(s.manifest is not None and s.size > 0 for s in listed)
    newest = listed[0].path
    assert sets.resolve_set(settings, "latest") == newest
    assert sets.resolve_set(settings, created[0]) == pg_only.backups / created[0]
    assert sets.resolve_set(settings, str(newest / MANIFEST_NAME)) == newest
    with pytest.raises(ConfigError, match="no backup set 'nope'"):
        sets.resolve_set(settings, "nope")

    removed = sets.prune(settings, keep=1)
    assert sorted(s.set_id for s in removed) == sorted(created)[:2]
    assert [s.set_id for s in sets.list_sets(settings)] == [max(created)]
    assert leftover.is_dir() and (pg_only.backups / "notes.txt").is_file()
    assert sets.prune(settings) == []  # backup.keep (5) sets kept
    with pytest.raises(ConfigError):
        sets.prune(settings, keep=0)


# -- too little disk ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards; skipped where mounting is not permitted."""
    where = tmp_path / "small-disk"
    where.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs: no mount command")
    if mounted.returncode != 0:
        pytest.skip(
            "cannot mount a 2 MiB tmpfs (needs root with CAP_SYS_ADMIN): "
            + (mounted.stderr.strip() or f"exit {mounted.returncode}")
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], capture_output=True, check=False)


@pytest.mark.parametrize(
    ("factor", "caught_by"),
    [("1.0", "the preflight estimate"), ("0", "the full disk during the dump")],
)
def test_too_little_disk_fails_cleanly(
    pg_only: Env, small_disk: Path, factor: str, caught_by: str
) -> None:
    # About 4 MiB of hex that gzip cannot shrink below 2 MiB.
    with psycopg.connect(pg_only.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_log (actor, action, detail)"
            " SELECT 'bulk', 'fill', jsonb_build_object('blob', (SELECT string_agg("
            "   md5(g::text || '/' || i), '') FROM generate_series(1, 8) i))"
            " FROM generate_series(1, 30000) g"
        )
        # Settle the table now: an autovacuum worker in the database at teardown would
        # make the fixture's DROP DATABASE ... WITH (FORCE) fail for a non-superuser.
        conn.execute("VACUUM ANALYZE audit_log")
    settings = pg_only.settings(
        RELEASEGATE_BACKUP__DIR=str(small_disk),
        RELEASEGATE_BACKUP__FREE_SPACE_FACTOR=factor,
    )
    with pytest.raises(set_create.NotEnoughSpace) as full:
        set_create.create(settings)

    message = str(full.value)
    assert message.startswith(f"not enough disk space in {small_disk} for the backup (needed ~")
    assert ", free " in message and "\n" not in message, caught_by
    assert full.value.exit_code == ExitCode.INFRA
    assert list(small_disk.iterdir()) == []  # no partial set left behind
    assert sets.list_sets(settings) == []
    last = releases(pg_only)
    if factor == "0":  # the dump started: the ledger records the failed attempt
        assert (last[0].kind, last[0].outcome) == ("backup", "failed")
        assert "not enough disk space" in last[0].summary["error"]
    else:  # refused before anything was written or recorded
        assert not [r for r in last if r.kind == "backup"]
