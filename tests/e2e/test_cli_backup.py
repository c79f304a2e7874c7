"""``releasegate backup create|list|verify|restore|prune``, run as a user runs them.

The installed console script in a child process, on a copy of the example project
migrated and seeded in a fresh Postgres database, with Redis in a flushed logical DB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from conftest import Project

RELEASEGATE = Path(sys.executable).parent / "releasegate"
PYTHON = Path(sys.executable)
SEED = Path(__file__).resolve().parents[2] / "scripts" / "seed.py"


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str


def run(project: Project, redis_url: str, *args: str, program: Path = RELEASEGATE) -> Run:
    proc = subprocess.run(
        [str(program), *args],
        cwd=project.root,
        env={**project.env, "NOTES_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return Run(tuple(args), proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def service(project: Project, redis_url: str) -> Project:
    """The example project with Redis, migrated to head and seeded by scripts/seed.py."""
    project.write_config(
        project.config_path.read_text()
        + '\n[redis]\nurl_env = "NOTES_REDIS_URL"\n\n[backup]\ndir = "backups"\n'
    )
    seeded = run(
        project,
        redis_url,
        str(SEED),
        "--users",
        "80",
        "--sessions",
        "120",
        "--migrate-to",
        "head",
        program=PYTHON,
    )
    assert seeded.code == 0, seeded.stderr
    report = json.loads(seeded.stdout)
    assert report["postgres"]["users"] == 80
    assert report["redis"]["sessions"] == 120
    return project


def users(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, email, display_name FROM users ORDER BY id").fetchall()


def test_backup_cycle_as_a_user_runs_it(service: Project, redis_url: str) -> None:
    created = run(service, redis_url, "backup", "create", "--json")
    assert created.code == 0, created.stderr
    manifest = json.loads(created.stdout)
    set_id = manifest["set_id"]
    assert [s["store"] for s in manifest["stores"]] == ["postgres", "redis"]
    assert manifest["versions"]["alembic"] == "0006"
    assert Path(manifest["path"], "manifest.json").is_file()

    listed = run(service, redis_url, "backup", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert [s["set_id"] for s in json.loads(listed.stdout)] == [set_id]
    as_text = run(service, redis_url, "backup", "list")
    assert set_id in as_text.stdout and "postgres, redis" in as_text.stdout

    verified = run(service, redis_url, "backup", "verify", "latest")
    assert verified.code == 0, verified.stdout + verified.stderr
    assert "postgres: ok" in verified.stdout and "redis: ok" in verified.stdout

    original = users(service.url)
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute("UPDATE users SET display_name = 'overwritten'")
    client = redis.Redis.from_url(redis_url)
    session = sorted(client.scan_iter(match="sess:*", count=1000))[0]
    session_value = client.get(session)
    client.set(session, b"tampered")
    client.close()

    refused = run(service, redis_url, "backup", "restore", set_id)
    assert refused.code == 2
    assert refused.stderr.startswith(f"error: restoring backup set {set_id} replaces")
    assert "--yes" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    # The loss report came first: 80 users overwritten, nothing lost, no live color.
    assert refused.stdout.startswith(f"restoring backup set {set_id} would replace")
    assert "public.users: 80 now, 80 in the set; 0 would be lost, 80 overwritten" in refused.stdout
    assert "traffic: no live color (the router is not running)" in refused.stdout
    assert {row[2] for row in users(service.url)} == {"overwritten"}
    as_json = run(service, redis_url, "backup", "restore", set_id, "--json")
    assert as_json.code == 2 and len(as_json.stderr.strip().splitlines()) == 1
    report = json.loads(as_json.stdout)
    assert report["restored"] is False
    assert report["loss"]["stores"]["postgres"]["changed"] == 80

    restored = run(service, redis_url, "backup", "restore", set_id, "--yes")
    assert restored.code == 0, restored.stderr
    assert "postgres: restored" in restored.stdout and "redis: restored" in restored.stdout
    assert users(service.url) == original
    client = redis.Redis.from_url(redis_url)
    assert client.get(session) == session_value
    assert client.dbsize() == 120 + 120 // 4
    client.close()

    history = run(service, redis_url, "history", "--json")
    kinds = [(r["kind"], r["outcome"]) for r in json.loads(history.stdout)]
    assert kinds[:2] == [("restore", "succeeded"), ("backup", "succeeded")]

    password = urlsplit(service.url).password
    for result in (created, listed, verified, refused, as_json, restored):
        assert f":{password}@" not in result.stdout + result.stderr


def test_verify_and_restore_of_a_damaged_set(service: Project, redis_url: str) -> None:
    created = run(service, redis_url, "backup", "create", "--store", "postgres", "--json")
    assert created.code == 0, created.stderr
    set_dir = Path(json.loads(created.stdout)["path"])
    dump = set_dir / "postgres.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))

    verified = run(service, redis_url, "backup", "verify", str(set_dir), "--json")
    assert verified.code == 1
    report = json.loads(verified.stdout)
    assert report["ok"] is False
    assert [d["item"] for d in report["damaged"]] == ["file postgres.dump"]

    as_text = run(service, redis_url, "backup", "verify", str(set_dir))
    assert as_text.code == 1
    assert "damaged files (nothing was restored)" in as_text.stdout
    assert "FAILED" in as_text.stdout

    restore = run(service, redis_url, "backup", "restore", "latest", "--yes")
    assert restore.code == 1
    assert "is damaged, nothing restored: postgres file postgres.dump" in restore.stderr


def test_a_manifest_of_odd_shape_is_reported_as_damaged(service: Project, redis_url: str) -> None:
    created = run(service, redis_url, "backup", "create", "--store", "postgres", "--json")
    assert created.code == 0, created.stderr
    manifest_path = Path(json.loads(created.stdout)["path"], "manifest.json")
    data = json.loads(manifest_path.read_text())
    data["stores"] = "abc"
    manifest_path.write_text(json.dumps(data))
    set_id = data["set_id"]
    for args in (("verify", set_id), ("restore", set_id, "--yes")):
        result = run(service, redis_url, "backup", *args)
        assert result.code == 1, result.stderr
        assert result.stderr == (
            f"error: manifest.json of backup set {set_id} is damaged: stores is not a list\n"
        )


def test_prune_and_argument_errors(service: Project, redis_url: str) -> None:
    for _ in range(2):
        assert run(service, redis_url, "backup", "create", "--store", "postgres").code == 0
    pruned = run(service, redis_url, "backup", "prune", "--keep", "1")
    assert pruned.code == 0, pruned.stderr
    assert "1 set(s) removed" in pruned.stdout
    listed = json.loads(run(service, redis_url, "backup", "list", "--json").stdout)
    assert len(listed) == 1

    unknown = run(service, redis_url, "backup", "verify", "no-such-set")
    assert unknown.code == 2
    assert unknown.stderr.startswith("error: no backup set 'no-such-set'")
    bad_store = run(service, redis_url, "backup", "create", "--store", "mongo")
    assert bad_store.code == 2
    assert "backup" in run(service, redis_url, "--help").stdout
