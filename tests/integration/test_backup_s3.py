"""Backup sets kept in an S3 bucket: upload, list, fetch, verify, restore, prune, failures.

The bucket is served by moto's standalone server (``python -m moto.server``) on a free
port of 127.0.0.1, the S3 stand-in; the sets are real backups of a real Postgres
database and Redis database (the fixtures of ``test_backup_sets``). The CLI runs as a
subprocess, and "a fresh working directory" is a copy of the project without its backup
folder, as a CI job on another runner would see it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import redis
from conftest import Project, free_port
from s3_server import moto_server
from test_backup_sets import Env, configure, fingerprint, redis_keys, releases, seed

from releasegate.backup import set_create
from releasegate.backup.manifest import MANIFEST_NAME, Manifest
from releasegate.errors import ExitCode, InfraError

RELEASEGATE = str(Path(sys.executable).parent / "releasegate")
ENDPOINT_ENV = "RG_TEST_S3_ENDPOINT"
SECRET = f"s3-secret-{uuid.uuid4().hex}"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "rg-test-key",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}
PREFIX = "sets/notes"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free port, for the tests of this module."""
    with moto_server(tmp_path_factory.mktemp("moto") / "server.log") as url:
        yield url


def s3_client(endpoint: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    ).client("s3", endpoint_url=endpoint)


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"rg-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def stored(project: Project, redis_url: str, bucket: str, s3_endpoint: str) -> S3Env:
    """Postgres and Redis seeded, sets kept in ``bucket`` under PREFIX."""
    configure(
        project,
        redis_on=True,
        qdrant=None,
        backup=f'destination = "s3://{bucket}/{PREFIX}/"\nendpoint_url_env = "{ENDPOINT_ENV}"\n',
    )
    env = S3Env(project, redis_url, endpoint=s3_endpoint, bucket=bucket)
    seed(env)
    return env


class S3Env(Env):
    """The example project with its backup destination in a moto bucket."""

    def __init__(self, project: Project, redis_url: str, *, endpoint: str, bucket: str) -> None:
        super().__init__(project, redis_url)
        self.endpoint = endpoint
        self.bucket = bucket

    def settings(self, **env: str) -> Any:
        return super().settings(**{**CREDENTIALS, ENDPOINT_ENV: self.endpoint, **env})

    def bucket_keys(self) -> list[str]:
        listed = s3_client(self.endpoint).list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def cli(self, *args: str, cwd: Path | None = None, endpoint: str | None = None) -> Run:
        root = cwd or self.project.root
        env = {
            **self.project.env,
            **CREDENTIALS,
            "NOTES_REDIS_URL": str(self.redis_url),
            ENDPOINT_ENV: endpoint or self.endpoint,
            "RELEASEGATE_CONFIG": str(root / "releasegate.toml"),
        }
        env.pop("RELEASEGATE_DEBUG", None)
        done = subprocess.run(
            [RELEASEGATE, *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert SECRET not in done.stdout + done.stderr
        return Run(done.returncode, done.stdout, done.stderr)

    def fresh_checkout(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """The project without its backup folder, as another runner would check it out."""
        fresh = tmp_path_factory.mktemp("fresh") / "project"
        shutil.copytree(
            self.project.root,
            fresh,
            ignore=shutil.ignore_patterns("backups", "qdrant", "__pycache__", ".releasegate"),
        )
        return fresh


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout: {self.out[-3000:]}\nstderr: {self.err[-3000:]}"


def set_keys(env: S3Env, set_id: str) -> list[str]:
    return [k for k in env.bucket_keys() if k.startswith(f"{PREFIX}/{set_id}/")]


# -- the whole journey --------------------------------------------------------------------


def test_set_is_uploaded_then_verified_and_restored_from_a_fresh_checkout(
    stored: S3Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = stored
    created = env.cli("backup", "create", "--json")
    assert created.code == 0, created
    made = json.loads(created.out)
    set_id = made["set_id"]
    assert made["destination"] == f"s3://{env.bucket}/{PREFIX}/ at {env.endpoint}"

    # Every file of the set is in the bucket, the manifest among them.
    local = env.backups / set_id
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert MANIFEST_NAME in files and len(files) > 2
    assert set_keys(env, set_id) == sorted(f"{PREFIX}/{set_id}/{name}" for name in files)
    body = s3_client(env.endpoint).get_object(
        Bucket=env.bucket, Key=f"{PREFIX}/{set_id}/{MANIFEST_NAME}"
    )["Body"]
    assert json.loads(body.read()) == Manifest.read(local).to_dict()
    backup_release = releases(env)[0]
    assert backup_release.summary["destination"] == made["destination"]
    assert "destination" in {e.step for e in backup_release.events}

    # The runner that made it is gone: another job starts from a fresh checkout.
    shutil.rmtree(env.backups)
    fresh = env.fresh_checkout(tmp_path_factory)
    listed = env.cli("backup", "list", "--json", cwd=fresh)
    assert listed.code == 0, listed
    [item] = json.loads(listed.out)
    assert (item["set_id"], item["local"], item["at_destination"]) == (set_id, False, True)
    assert item["stores"] == ["postgres", "redis"]
    assert not (fresh / "backups").exists()  # listing downloads nothing

    before_rows = fingerprint(env.url)
    assert env.redis_url is not None
    before_keys = redis_keys(env.redis_url)
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute("DELETE FROM document_chunks WHERE id % 3 = 0")
    client = redis.Redis.from_url(env.redis_url)
    client.delete(*sorted(before_keys)[:25])
    client.close()
    assert fingerprint(env.url) != before_rows

    verified = env.cli("backup", "verify", set_id, cwd=fresh)
    assert verified.code == 0, verified
    assert "verified" in verified.out
    fetched = fresh / "backups" / set_id
    assert Manifest.read(fetched).set_id == set_id
    assert sorted(p.name for p in (fresh / "backups").iterdir()) == [set_id]  # no .partial

    restored = env.cli("backup", "restore", set_id, "--yes", cwd=fresh)
    assert restored.code == 0, restored
    assert fingerprint(env.url) == before_rows
    assert redis_keys(env.redis_url) == before_keys


def test_a_damaged_download_is_refused_and_not_kept(
    stored: S3Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = stored
    manifest = set_create.create(env.settings())
    dump = f"{PREFIX}/{manifest.set_id}/postgres.dump"
    assert dump in set_keys(env, manifest.set_id)
    s3 = s3_client(env.endpoint)
    data = bytearray(s3.get_object(Bucket=env.bucket, Key=dump)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=env.bucket, Key=dump, Body=bytes(data))

    fresh = env.fresh_checkout(tmp_path_factory)
    verified = env.cli("backup", "verify", manifest.set_id, cwd=fresh)
    assert verified.code == ExitCode.CHECK_FAILED, verified
    [line] = verified.err.strip().splitlines()
    assert line.startswith("error: ") and "is damaged, nothing kept" in line
    assert "postgres file postgres.dump" in line
    assert list((fresh / "backups").iterdir()) == []


# -- retention ----------------------------------------------------------------------------


def test_prune_keeps_the_newest_sets_at_the_destination(
    stored: S3Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = stored
    settings = env.settings()
    ids = [set_create.create(settings, stores=["redis"]).set_id for _ in range(3)]
    assert ids == sorted(ids)
    oldest, *newest = ids

    fresh = env.fresh_checkout(tmp_path_factory)
    pruned = env.cli("backup", "prune", "--keep", "2", "--json", cwd=fresh)
    assert pruned.code == 0, pruned
    assert [s["set_id"] for s in json.loads(pruned.out)] == [oldest]
    assert set_keys(env, oldest) == []
    assert all(MANIFEST_NAME in " ".join(set_keys(env, i)) for i in newest)

    # The creating machine's copies follow the same retention on its next prune.
    assert (env.backups / oldest).is_dir()
    again = env.cli("backup", "prune", "--keep", "2")
    assert again.code == 0, again
    assert sorted(p.name for p in env.backups.iterdir()) == newest


# -- failures -----------------------------------------------------------------------------


def test_unreachable_or_refusing_destination_fails_the_backup_and_changes_nothing(
    stored: S3Env,
) -> None:
    env = stored
    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = env.cli("backup", "create", endpoint=closed)
    assert unreachable.code == ExitCode.INFRA, unreachable
    [line] = unreachable.err.strip().splitlines()
    assert line.startswith(f"error: backup destination s3://{env.bucket}/{PREFIX}/ at {closed}:")
    assert "cannot reach the bucket" in line

    config = env.project.config_path
    config.write_text(config.read_text().replace(env.bucket, f"{env.bucket}-missing"))
    refused = env.cli("backup", "create")
    assert refused.code == ExitCode.INFRA, refused
    assert len(refused.err.strip().splitlines()) == 1

    assert not env.backups.exists() or list(env.backups.iterdir()) == []
    assert env.bucket_keys() == []
    assert [r for r in releases(env) if r.kind == "backup"] == []


def test_a_bucket_that_refuses_the_upload_leaves_no_set(stored: S3Env) -> None:
    env = stored
    settings = env.settings()

    def bucket_gone(event: set_create.Progress) -> None:
        # After the preflight found the bucket, before the upload: the upload is refused.
        if event.status == "done":
            s3_client(env.endpoint).delete_bucket(Bucket=env.bucket)

    with pytest.raises(InfraError) as failed:
        set_create.create(settings, stores=["redis"], on_progress=bucket_gone)
    assert failed.value.exit_code == ExitCode.INFRA
    message = str(failed.value)
    assert message.startswith(f"backup destination s3://{env.bucket}/{PREFIX}/")
    assert "cannot upload backup set" in message and "NoSuchBucket" in message
    assert "\n" not in message and SECRET not in message
    assert list(env.backups.iterdir()) == []
    [backup_release] = [r for r in releases(env) if r.kind == "backup"]
    assert backup_release.outcome == "failed"
    assert "cannot upload" in backup_release.summary["error"]


def test_a_partial_upload_is_never_listed(stored: S3Env) -> None:
    env = stored
    complete = set_create.create(env.settings(), stores=["redis"])
    # An upload cut short: the files of a newer set without its manifest, which goes last.
    partial_id = "29990101T000000.000Z"
    s3 = s3_client(env.endpoint)
    for path in (env.backups / complete.set_id).iterdir():
        if path.name != MANIFEST_NAME:
            s3.put_object(
                Bucket=env.bucket, Key=f"{PREFIX}/{partial_id}/{path.name}", Body=path.read_bytes()
            )
    shutil.rmtree(env.backups)

    listed = env.cli("backup", "list", "--json")
    assert listed.code == 0, listed
    assert [s["set_id"] for s in json.loads(listed.out)] == [complete.set_id]
    latest = env.cli("backup", "verify", "latest")
    assert latest.code == 0, latest
    assert complete.set_id in latest.out
    missing = env.cli("backup", "verify", partial_id)
    assert missing.code == ExitCode.USAGE, missing
    assert "no backup set" in missing.err
