"""Restores that cannot be tampered with, report their losses, ask first, and are all or nothing.

Real services only, as in test_backup_sets: the example project migrated and seeded in a
fresh Postgres database, a flushed logical Redis database, an embedded Qdrant, and (for
the live-color tests) a real HAProxy in front of a small HTTP server.
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from conftest import Project, free_port
from qdrant_client import QdrantClient
from qdrant_client.models import PointStruct
from test_backup_sets import Env, configure, releases, seed

from releasegate.backup import redis as redis_backup
from releasegate.backup import set_create, set_restore, sets
from releasegate.backup.base import sha256_file
from releasegate.backup.loss import BY_CONTENT, BY_COUNTS, LossReport
from releasegate.backup.manifest import MANIFEST_NAME, Manifest
from releasegate.backup.redis import STAGING_PREFIX
from releasegate.backup.redis_format import DumpReader, DumpWriter, check_file
from releasegate.errors import CheckFailed, ConfigError, ExitCode, StateError
from releasegate.router.manager import router_down, router_up
from releasegate.router.state import wait_healthy

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


# -- helpers ------------------------------------------------------------------------------


def edit_manifest(set_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = set_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def entry_of(data: dict[str, Any], store: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in data["stores"] if s["store"] == store)
    return found


def reseal(set_dir: Path, store: str, name: str) -> None:
    """Record the file's present size and SHA-256 in the manifest, as a tamperer would."""
    path = set_dir / name

    def change(data: dict[str, Any]) -> None:
        for item in entry_of(data, store)["files"]:
            if item["name"] == name:
                item["sha256"], item["size"] = sha256_file(path), path.stat().st_size

    edit_manifest(set_dir, change)


def database_state(url: str) -> dict[str, Any]:
    """Everything a failed restore must leave as it was."""
    with psycopg.connect(url) as conn:
        return {
            "users": conn.execute("SELECT * FROM users ORDER BY id").fetchall(),
            "chunks": conn.execute(
                "SELECT count(*), md5(string_agg(text, '|' ORDER BY id)) FROM document_chunks"
            ).fetchone(),
            "alembic": conn.execute("SELECT version_num FROM alembic_version").fetchall(),
            "users_seq": conn.execute("SELECT last_value FROM users_id_seq").fetchone(),
            "tables": conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall(),
        }


def add_users(url: str, n: int) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO users (email, display_name) SELECT 'late' || g || '@example.com',"
            " 'Late ' || g FROM generate_series(1, %s) g RETURNING id",
            (n,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def redis_dump(url: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(url)
    try:
        return {k: client.dump(k) or b"" for k in client.scan_iter(count=1000)}
    finally:
        client.close()


def qdrant_state(path: Path) -> dict[str, Any]:
    client = QdrantClient(path=str(path))
    try:
        names = sorted(c.name for c in client.get_collections().collections)
        aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
        points = {}
        for name in names:
            records, _next = client.scroll(name, limit=10_000, with_vectors=True)
            points[name] = sorted(
                (str(r.id), json.dumps(r.payload, sort_keys=True)) for r in records
            )
        return {"names": names, "aliases": aliases, "points": points}
    finally:
        client.close()


def break_a_point(path: Path) -> None:
    """Give the middle point of a points file a vector of the wrong size: the file still
    reads, Qdrant refuses that point half way through the load."""
    lines = gzip.decompress(path.read_bytes()).splitlines()
    bad = json.loads(lines[len(lines) // 2])
    bad["dense"] = {name: "AACAPw==" for name in bad["dense"]}  # one float
    lines[len(lines) // 2] = json.dumps(bad).encode()
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))


@pytest.fixture
def pg_only(project: Project) -> Env:
    configure(project, redis_on=False, qdrant=None)
    env = Env(project)
    seed(env, users=40)
    return env


@pytest.fixture
def all_stores(project: Project, redis_url: str, qdrant_path: Path) -> Env:
    configure(project, redis_on=True, qdrant=qdrant_path)
    env = Env(project, redis_url, qdrant_path)
    seed(env, users=40)
    return env


# -- A: the files a restore reads are the files that were checksummed ----------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../../../etc/passwd",
        "/etc/hostname",
        "postgres/../../outside",
        "a//b",
        "./postgres.dump",
    ],
)
def test_a_file_name_outside_the_set_is_damage(pg_only: Env, name: str) -> None:
    manifest = set_create.create(pg_only.settings())
    set_dir = pg_only.backups / manifest.set_id
    outside = Path("/etc/hostname")
    size = outside.stat().st_size

    def change(data: dict[str, Any]) -> None:
        entry_of(data, "postgres")["files"] = [
            {"name": name, "sha256": sha256_file(outside), "size": size}
        ]

    edit_manifest(set_dir, change)
    before = database_state(pg_only.url)
    for call in (sets.verify, lambda s, ref: set_restore.restore(s, ref, yes=True)):
        with pytest.raises(CheckFailed) as damaged:
            call(pg_only.settings(), manifest.set_id)
        message = str(damaged.value)
        assert message.startswith(f"{MANIFEST_NAME} of backup set {manifest.set_id} is damaged:")
        assert f"{size} bytes" not in message
    assert database_state(pg_only.url) == before


def test_a_link_out_of_the_set_is_refused_without_reading_it(pg_only: Env, tmp_path: Path) -> None:
    manifest = set_create.create(pg_only.settings())
    set_dir = pg_only.backups / manifest.set_id
    # The same dump, with the same checksum, but outside the set behind a link.
    elsewhere = tmp_path / "elsewhere.dump"
    shutil.move(set_dir / "postgres.dump", elsewhere)
    (set_dir / "postgres.dump").symlink_to(elsewhere)

    result = sets.verify(pg_only.settings(), manifest.set_id)
    assert not result.ok
    assert [(d.item, d.actual) for d in result.damaged] == [
        ("file postgres.dump", "a link out of the folder")
    ]
    with pytest.raises(CheckFailed, match="is damaged, nothing restored: postgres file"):
        set_restore.restore(pg_only.settings(), manifest.set_id, yes=True)


def test_a_store_without_its_file_entry_is_refused_and_nothing_is_touched(pg_only: Env) -> None:
    """The probe: ``"files": []`` and a truncated dump; the database was wiped before."""
    manifest = set_create.create(pg_only.settings())
    set_dir = pg_only.backups / manifest.set_id
    dump = set_dir / "postgres.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    edit_manifest(set_dir, lambda data: entry_of(data, "postgres").update(files=[]))
    before = database_state(pg_only.url)

    verified = sets.verify(pg_only.settings(), manifest.set_id)
    assert [(d.item, d.actual) for d in verified.damaged] == [("file postgres.dump", "not listed")]
    with pytest.raises(CheckFailed) as refused:
        set_restore.restore(pg_only.settings(), manifest.set_id, yes=True)
    assert "is damaged, nothing restored: postgres file postgres.dump" in str(refused.value)
    assert database_state(pg_only.url) == before


def test_a_redis_file_outside_the_set_is_not_restored(
    project: Project, redis_url: str, tmp_path: Path
) -> None:
    configure(project, redis_on=True, qdrant=None)
    env = Env(project, redis_url)
    seed(env, users=20)
    manifest = set_create.create(env.settings(), stores=["postgres", "redis"])
    set_dir = env.backups / manifest.set_id
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(set_dir / "redis.rgdump", outside / "redis.rgdump")
    edit_manifest(
        set_dir,
        lambda data: entry_of(data, "redis")["files"][0].update(name="../../outside/redis.rgdump"),
    )
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()

    with pytest.raises(CheckFailed, match=r"is damaged: redis\.files"):
        set_restore.restore(env.settings(), manifest.set_id, stores=["redis"], yes=True)
    assert redis_dump(redis_url) == {}


# -- C: damaged manifests of odd shapes -----------------------------------------------------


def _stores_abc(data: dict[str, Any]) -> None:
    data["stores"] = "abc"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (_stores_abc, "stores is not a list"),
        (lambda d: entry_of(d, "postgres").update(counts=[1, 2]), "postgres.counts is not an"),
        (lambda d: entry_of(d, "postgres").update(files={"a": 1}), "postgres.files is not a list"),
        (lambda d: entry_of(d, "postgres")["files"][0].update(size="12"), "size is not a byte"),
        (lambda d: entry_of(d, "postgres")["files"][0].update(sha256="xyz"), "sha256 is not"),
        (lambda d: entry_of(d, "postgres")["counts"].update(tables=[]), "counts.tables is not"),
        (lambda d: d["stores"].append(3), "stores[1] is not an object"),
        (lambda d: d.update(versions="0006"), "versions is not an object"),
    ],
)
def test_a_manifest_of_odd_shape_is_damaged_not_an_internal_error(
    pg_only: Env, change: Callable[[dict[str, Any]], None], why: str
) -> None:
    manifest = set_create.create(pg_only.settings())
    set_dir = pg_only.backups / manifest.set_id
    edit_manifest(set_dir, change)
    for call in (sets.verify, lambda s, ref: set_restore.restore(s, ref, yes=True)):
        with pytest.raises(CheckFailed) as damaged:
            call(pg_only.settings(), manifest.set_id)
        assert str(damaged.value).startswith(
            f"{MANIFEST_NAME} of backup set {manifest.set_id} is damaged: "
        )
        assert why in str(damaged.value)
        assert damaged.value.exit_code == ExitCode.CHECK_FAILED


# -- D: the loss report and the confirmations ------------------------------------------------


def test_the_loss_report_names_what_would_be_lost_and_nothing_changes(pg_only: Env) -> None:
    manifest = set_create.create(pg_only.settings())
    late = add_users(pg_only.url, 3)
    with psycopg.connect(pg_only.url, autocommit=True) as conn:
        conn.execute("UPDATE users SET display_name = 'renamed' WHERE id = 1")
    before = database_state(pg_only.url)
    reports: list[LossReport] = []

    with pytest.raises(ConfigError) as refused:
        set_restore.restore(pg_only.settings(), manifest.set_id, on_report=reports.append)
    assert refused.value.exit_code == ExitCode.USAGE
    assert "nothing changed" in str(refused.value) and "--yes" in str(refused.value)
    assert database_state(pg_only.url) == before
    assert not [r for r in releases(pg_only) if r.kind == "restore"]

    [report] = reports
    loss = report.stores["postgres"]
    assert loss.method == BY_CONTENT and loss.note is None
    users = next(s for s in loss.scopes if s.scope == "public.users")
    assert (users.now, users.in_set, users.lost, users.changed) == (43, 40, 3, 1)
    assert users.examples["added"] == [str(i) for i in late]
    assert users.examples["changed"] == ["1"]
    assert loss.lost_at_least == 3 and report.loses_anything
    text = "\n".join(report.lines())
    assert "public.users: 43 now, 40 in the set; 3 would be lost, 1 overwritten" in text
    assert f"lost: {', '.join(str(i) for i in late)}" in text
    assert "no live color" in text


def test_an_old_set_without_fingerprints_reports_by_counts(pg_only: Env) -> None:
    manifest = set_create.create(pg_only.settings())
    set_dir = pg_only.backups / manifest.set_id
    edit_manifest(
        set_dir,
        lambda d: entry_of(d, "postgres").update(
            files=[f for f in entry_of(d, "postgres")["files"] if f["name"] == "postgres.dump"]
        ),
    )
    add_users(pg_only.url, 5)
    reports: list[LossReport] = []
    with pytest.raises(ConfigError):
        set_restore.restore(pg_only.settings(), manifest.set_id, on_report=reports.append)
    loss = reports[0].stores["postgres"]
    assert loss.method == BY_COUNTS and loss.note and "fingerprints" in loss.note
    users = next(s for s in loss.scopes if s.scope == "public.users")
    assert (users.now, users.in_set, users.lost, users.lost_at_least) == (45, 40, None, 5)
    assert "(counts only: " in "\n".join(reports[0].lines())


class HealthyServer:
    """An HTTP server answering 200 to everything: the blue color behind the router."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def live_blue(pg_only: Env) -> Iterator[Env]:
    """pg_only with a running router whose live color is blue."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed")
    blue, green, port = free_port(), free_port(), free_port()
    config = pg_only.project.config_path
    config.write_text(
        config.read_text()
        + f"\n[deploy]\nblue_port = {blue}\ngreen_port = {green}\n"
        + f'\n[router]\nbind = "127.0.0.1:{port}"\nruntime_dir = "rt"\ncheck_interval = "100ms"\n'
    )
    server = HealthyServer(blue)
    settings = pg_only.settings()
    try:
        router_up(settings)
        wait_healthy(settings, ["blue"], timeout=5)
        yield pg_only
    finally:
        router_down(settings, forget=True)
        server.stop()


def test_a_live_color_needs_while_live(live_blue: Env) -> None:
    env = live_blue
    manifest = set_create.create(env.settings())
    add_users(env.url, 2)
    before = database_state(env.url)
    reports: list[LossReport] = []

    with pytest.raises(ConfigError) as unconfirmed:
        set_restore.restore(env.settings(), manifest.set_id, on_report=reports.append)
    assert "add --while-live too" in str(unconfirmed.value)
    with pytest.raises(ConfigError) as live:
        set_restore.restore(env.settings(), manifest.set_id, yes=True, on_report=reports.append)
    message = str(live.value)
    assert message.startswith("blue serves traffic:") and "--while-live" in message
    assert "nothing changed" in message and "\n" not in message
    assert live.value.exit_code == ExitCode.USAGE
    assert database_state(env.url) == before
    assert [r.live_color for r in reports] == ["blue", "blue"]
    assert "blue serves traffic" in reports[0].lines()[-1]

    result = set_restore.restore(env.settings(), manifest.set_id, yes=True, while_live=True)
    assert result.while_live and result.loss.live_color == "blue"
    assert database_state(env.url)["users"] != before["users"]


# -- D: all or nothing ----------------------------------------------------------------------


def test_a_truncated_dump_that_passes_its_checksum_leaves_postgres_as_it_was(
    pg_only: Env,
) -> None:
    manifest = set_create.create(pg_only.settings())
    set_dir = pg_only.backups / manifest.set_id
    dump = set_dir / "postgres.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size * 2 // 3])
    reseal(set_dir, "postgres", "postgres.dump")
    add_users(pg_only.url, 2)
    before = database_state(pg_only.url)

    with pytest.raises(CheckFailed) as failed:
        set_restore.restore(pg_only.settings(), manifest.set_id, yes=True)
    message = str(failed.value)
    assert message.startswith("pg_restore failed on")
    assert message.endswith("the database is unchanged; no store was changed")
    assert database_state(pg_only.url) == before
    last = releases(pg_only)[0]
    assert (last.kind, last.outcome) == ("restore", "failed")


def test_a_lock_held_by_another_session_fails_the_restore_and_changes_nothing(
    pg_only: Env,
) -> None:
    manifest = set_create.create(pg_only.settings())
    add_users(pg_only.url, 2)
    before = database_state(pg_only.url)
    with psycopg.connect(pg_only.url) as holder:
        holder.execute("SELECT count(*) FROM document_chunks")  # holds ACCESS SHARE
        with pytest.raises(StateError) as busy:
            set_restore.restore(pg_only.settings(), manifest.set_id, yes=True)
        holder.rollback()
    assert "in use (lock timeout)" in str(busy.value)
    assert str(busy.value).endswith("the database is unchanged; no store was changed")
    assert database_state(pg_only.url) == before


def test_sequences_are_never_rewound_below_ids_handed_out(pg_only: Env) -> None:
    manifest = set_create.create(pg_only.settings())
    late = add_users(pg_only.url, 5)  # ids 41..45 handed out after the backup
    result = set_restore.restore(pg_only.settings(), manifest.set_id, yes=True)
    assert result.stores["postgres"]["sequences_kept"]["public.users_id_seq"] == max(late)
    with psycopg.connect(pg_only.url) as conn:
        assert conn.execute("SELECT max(id) FROM users").fetchone() == (40,)
    assert min(add_users(pg_only.url, 1)) > max(late)


def test_a_redis_key_that_fails_to_restore_leaves_redis_as_it_was(all_stores: Env) -> None:
    env = all_stores
    assert env.redis_url
    manifest = set_create.create(env.settings(), stores=["postgres", "redis"])
    set_dir = env.backups / manifest.set_id
    path = set_dir / "redis.rgdump"
    meta, _n = check_file(path)
    records = list(DumpReader(path).records())
    rebuilt = path.with_suffix(".new")
    writer = DumpWriter(rebuilt, meta)
    for n, rec in enumerate(records):
        payload = rec.payload
        if n == len(records) // 2:  # a payload whose own CRC64 fails
            payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
        writer.add(rec.key, rec.type_code, rec.expire_at_ms, payload)
    writer.close()
    rebuilt.replace(path)
    reseal(set_dir, "redis", "redis.rgdump")
    client = redis.Redis.from_url(env.redis_url)
    client.set("written-after-the-backup", "1")
    client.close()
    before = redis_dump(env.redis_url)

    # The loss report reads every payload first: the set is refused before anything.
    with pytest.raises(CheckFailed, match="cannot read a payload of the backup"):
        set_restore.restore(env.settings(), manifest.set_id, stores=["redis"], yes=True)
    assert redis_dump(env.redis_url) == before
    # The store's own restore fails half way through staging: the live keys are untouched.
    entry = Manifest.read(set_dir).store("redis")
    assert entry is not None
    with pytest.raises(CheckFailed, match="RESTORE of key"):
        redis_backup.restore(env.settings(), set_dir, entry, force=True)
    after = redis_dump(env.redis_url)
    assert after == before
    assert not [k for k in after if k.startswith(STAGING_PREFIX)]


def test_a_qdrant_load_that_fails_midway_puts_the_collections_back(all_stores: Env) -> None:
    env = all_stores
    assert env.qdrant_path
    manifest = set_create.create(env.settings(), stores=["postgres", "qdrant"])
    set_dir = env.backups / manifest.set_id
    [points_file] = [
        f["name"]
        for f in entry_of(json.loads((set_dir / MANIFEST_NAME).read_text()), "qdrant")["files"]
    ]
    break_a_point(set_dir / points_file)
    reseal(set_dir, "qdrant", points_file)
    client = QdrantClient(path=str(env.qdrant_path))
    [collection] = [c.name for c in client.get_collections().collections]
    client.delete(collection, points_selector=[1, 2, 3])
    client.close()
    before = qdrant_state(env.qdrant_path)

    with pytest.raises(StateError, match="Vector dimension error") as failed:
        set_restore.restore(env.settings(), manifest.set_id, stores=["qdrant"], yes=True)
    assert "the previous collections were put back" in str(failed.value)
    assert qdrant_state(env.qdrant_path) == before


def test_a_failure_in_one_store_leaves_every_store_as_it_was(all_stores: Env) -> None:
    """Qdrant fails while Redis and Postgres are staged: nothing anywhere changes."""
    env = all_stores
    assert env.redis_url and env.qdrant_path
    manifest = set_create.create(env.settings())
    set_dir = env.backups / manifest.set_id
    data = json.loads((set_dir / MANIFEST_NAME).read_text())
    [points_file] = [f["name"] for f in entry_of(data, "qdrant")["files"]]
    break_a_point(set_dir / points_file)
    reseal(set_dir, "qdrant", points_file)
    add_users(env.url, 2)
    client = redis.Redis.from_url(env.redis_url)
    client.set("written-after-the-backup", "1")
    client.close()
    before = (database_state(env.url), redis_dump(env.redis_url), qdrant_state(env.qdrant_path))

    with pytest.raises(StateError) as failed:
        set_restore.restore(env.settings(), manifest.set_id, yes=True)
    assert str(failed.value).endswith("previous collections were put back; no store was changed")
    after = (database_state(env.url), redis_dump(env.redis_url), qdrant_state(env.qdrant_path))
    assert after == before


def test_committed_stores_are_put_back_when_a_later_one_fails(all_stores: Env) -> None:
    """The undo after a commit: Redis and Qdrant committed, then Postgres fails."""
    env = all_stores
    assert env.redis_url and env.qdrant_path
    manifest = set_create.create(env.settings(), stores=["postgres", "redis", "qdrant"])
    set_dir = env.backups / manifest.set_id
    client = redis.Redis.from_url(env.redis_url)
    client.set("written-after-the-backup", "1")
    client.delete(next(iter(client.scan_iter(match="sess:*"))))
    client.close()
    qclient = QdrantClient(path=str(env.qdrant_path))
    [collection] = [c.name for c in qclient.get_collections().collections]
    qclient.delete(collection, points_selector=[1, 2])
    qclient.close()
    before = (redis_dump(env.redis_url), qdrant_state(env.qdrant_path))
    settings = env.settings()
    by_store = {e.store: e for e in manifest.stores}
    staged = {
        store: sets.store_module(store).stage(settings, set_dir, by_store[store], force=True)
        for store in ("redis", "qdrant")
    }
    for store in ("qdrant", "redis"):
        staged[store].commit()
    assert redis_dump(env.redis_url) != before[0]  # committed: the set's keys are live

    failure = set_restore.unwind(staged, ["qdrant", "redis"], CheckFailed("postgres failed"))
    assert str(failure) == "postgres failed; no store was changed"
    assert (redis_dump(env.redis_url), qdrant_state(env.qdrant_path)) == before


def test_the_loss_report_covers_keyspaces_and_collections(all_stores: Env) -> None:
    env = all_stores
    assert env.redis_url and env.qdrant_path
    manifest = set_create.create(env.settings())
    client = redis.Redis.from_url(env.redis_url)
    for n in range(3):
        client.set(f"written-after-the-backup:{n}", n)
    client.close()
    qclient = QdrantClient(path=str(env.qdrant_path))
    [collection] = [c.name for c in qclient.get_collections().collections]
    [point] = qclient.retrieve(collection, [1], with_vectors=True)
    qclient.upsert(
        collection,
        [PointStruct(id=1000 + n, vector=point.vector, payload={"late": n}) for n in range(2)],
    )
    qclient.close()
    before = (redis_dump(env.redis_url), qdrant_state(env.qdrant_path))
    reports: list[LossReport] = []

    with pytest.raises(ConfigError):
        set_restore.restore(env.settings(), manifest.set_id, on_report=reports.append)
    assert (redis_dump(env.redis_url), qdrant_state(env.qdrant_path)) == before
    [report] = reports
    keys, points = report.stores["redis"], report.stores["qdrant"]
    assert keys.lost_at_least == 3 and points.lost_at_least == 2
    assert (keys.method, points.method) == (BY_CONTENT, BY_CONTENT)
    [scope] = points.scopes  # named after the alias, counted in the collection
    assert (scope.scope, scope.now, scope.in_set, scope.lost) == ("documents", 42, 40, 2)
    assert scope.examples == {"added": ["1000", "1001"]}
    text = "\n".join(report.lines())
    assert "    documents: 42 now, 40 in the set; 2 would be lost, 0 overwritten" in text
    assert "redis (compared item by item): 3 keys would be lost, 0 overwritten" in text
    assert "lost: written-after-the-backup:" in text


def test_a_directory_dump_restores_only_listed_files(project: Project) -> None:
    configure(project, redis_on=False, qdrant=None, backup='postgres_format = "directory"\n')
    env = Env(project)
    seed(env, users=30)
    manifest = set_create.create(env.settings())
    set_dir = env.backups / manifest.set_id
    late = add_users(env.url, 2)

    result = set_restore.restore(env.settings(), manifest.set_id, yes=True)
    assert result.stores["postgres"]["tables"]["public.users"] == 30
    assert result.stores["postgres"]["sequences_kept"]["public.users_id_seq"] == max(late)

    # A file nobody checksummed, slipped into the dump folder, is refused.
    (set_dir / "postgres" / "9999.dat.gz").write_bytes(b"not from the backup")
    with pytest.raises(CheckFailed, match=r"postgres/9999\.dat\.gz is in the dump folder"):
        set_restore.restore(env.settings(), manifest.set_id, yes=True)
