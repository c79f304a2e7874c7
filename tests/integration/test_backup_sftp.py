"""Backup sets kept on a backup host over SFTP: upload, list, fetch, verify, restore, prune,
and the faults of the connection and of a full disk there.

The backup host is the simulated remote host (tests/remote_host.py): its sshd, reached
at the namespace's own address with the pinned host key and the generated client key,
as ``sftp://root@ADDR/FOLDER``. The namespace shares this machine's mount namespace, so
the folder the sshd writes to is also a folder here, which the tests read to see what
reached the backup host (and where a small tmpfs makes its disk full). The sets are real
backups of a real Postgres database and Redis database (the fixtures of
``test_backup_sets``); the CLI runs as a subprocess, and "a fresh working directory" is a
copy of the project without its backup folder, as a CI job on another runner sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Project, free_port
from remote_host import RemoteHost, new_key_pair, other_known_hosts
from test_backup_s3 import Run
from test_backup_sets import Env, configure, fingerprint, releases, seed

from releasegate.backup import set_create
from releasegate.backup.destinations.sftp import SftpFolder, SftpLocation
from releasegate.backup.manifest import MANIFEST_NAME, Manifest
from releasegate.errors import ExitCode, InfraError
from releasegate.hosts.ssh import SshTunnel

RELEASEGATE = str(Path(sys.executable).parent / "releasegate")


class SftpEnv(Env):
    """The example project with its backup destination in a folder on the backup host."""

    def __init__(self, project: Project, redis_url: str, *, host: RemoteHost, folder: Path) -> None:
        super().__init__(project, redis_url)
        self.host = host
        self.folder = folder

    @property
    def destination(self) -> str:
        return f"sftp://{self.host.ssh_user}@{self.host.address}{self.folder}"

    def ssh_env(self, **overrides: str) -> dict[str, str]:
        return {
            "RELEASEGATE_SSH_KNOWN_HOSTS": str(self.host.known_hosts),
            "RELEASEGATE_SSH_IDENTITY_FILE": str(self.host.ssh_key),
            **overrides,
        }

    def settings(self, **env: str) -> Any:
        return super().settings(**self.ssh_env(**env))

    def remote_files(self, set_id: str | None = None) -> list[str]:
        """What the backup host holds, as paths relative to the destination folder."""
        root = self.folder / set_id if set_id else self.folder
        return sorted(p.relative_to(self.folder).as_posix() for p in root.rglob("*"))

    def cli(self, *args: str, cwd: Path | None = None, **env: str) -> Run:
        root = cwd or self.project.root
        run_env = {
            # Only what a job sets: no RELEASEGATE_* of this shell (such as the host's selection).
            **{k: v for k, v in self.project.env.items() if not k.startswith("RELEASEGATE_")},
            **self.ssh_env(**env),
            "NOTES_REDIS_URL": str(self.redis_url),
            "RELEASEGATE_CONFIG": str(root / "releasegate.toml"),
        }
        done = subprocess.run(
            [RELEASEGATE, *args],
            cwd=root,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def fresh_checkout(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """The project without its backup folder, as another runner would check it out."""
        fresh = tmp_path_factory.mktemp("fresh") / "project"
        shutil.copytree(
            self.project.root,
            fresh,
            ignore=shutil.ignore_patterns("backups", "__pycache__", ".releasegate"),
        )
        return fresh

    def use_destination(self, url: str) -> None:
        config = self.project.config_path
        config.write_text(config.read_text().replace(self.destination, url))


@pytest.fixture
def stored(
    project: Project,
    redis_url: str,
    remote_host: RemoteHost,
    tmp_path_factory: pytest.TempPathFactory,
) -> SftpEnv:
    """Postgres and Redis seeded, sets kept on the backup host in a folder of their own."""
    folder = tmp_path_factory.mktemp("backup-host") / "sets"
    folder.mkdir()
    env = SftpEnv(project, redis_url, host=remote_host, folder=folder)
    configure(project, redis_on=True, qdrant=None, backup=f'destination = "{env.destination}"\n')
    seed(env)
    return env


def backup_runs(env: SftpEnv) -> list[str]:
    return [r.outcome for r in releases(env) if r.kind == "backup"]


# -- the whole journey --------------------------------------------------------------------


def test_set_is_uploaded_then_listed_verified_and_restored_from_a_fresh_checkout(
    stored: SftpEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = stored
    created = env.cli("backup", "create", "--json")
    assert created.code == 0, created
    made = json.loads(created.out)
    set_id = made["set_id"]
    assert made["destination"] == env.destination

    # Every file of the set is on the backup host, byte for byte, the manifest among them.
    local = env.backups / set_id
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*"))
    assert MANIFEST_NAME in files and len(files) > 2
    assert env.remote_files(set_id) == sorted(f"{set_id}/{name}" for name in files)
    for name in files:
        if (local / name).is_file():
            assert (env.folder / set_id / name).read_bytes() == (local / name).read_bytes()
    assert "destination" in {e.step for e in releases(env)[0].events}

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
    with psycopg.connect(env.url, autocommit=True) as conn:
        conn.execute("DELETE FROM document_chunks WHERE id % 3 = 0")
    assert fingerprint(env.url) != before_rows

    verified = env.cli("backup", "verify", set_id, cwd=fresh)
    assert verified.code == 0, verified
    assert "verified" in verified.out
    assert Manifest.read(fresh / "backups" / set_id).set_id == set_id

    restored = env.cli("backup", "restore", set_id, "--yes", cwd=fresh)
    assert restored.code == 0, restored
    assert fingerprint(env.url) == before_rows


def test_a_damaged_copy_on_the_backup_host_is_refused_and_not_kept(
    stored: SftpEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = stored
    manifest = set_create.create(env.settings())
    dump = env.folder / manifest.set_id / "postgres.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    fresh = env.fresh_checkout(tmp_path_factory)
    verified = env.cli("backup", "verify", manifest.set_id, cwd=fresh)
    assert verified.code == ExitCode.CHECK_FAILED, verified
    [line] = verified.err.strip().splitlines()
    assert line.startswith("error: ") and "is damaged, nothing kept" in line
    assert list((fresh / "backups").iterdir()) == []


def test_prune_keeps_the_newest_sets_on_the_backup_host(
    stored: SftpEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = stored
    settings = env.settings()
    ids = [set_create.create(settings, stores=["redis"]).set_id for _ in range(3)]
    oldest, *newest = ids

    fresh = env.fresh_checkout(tmp_path_factory)
    pruned = env.cli("backup", "prune", "--keep", "2", "--json", cwd=fresh)
    assert pruned.code == 0, pruned
    assert [s["set_id"] for s in json.loads(pruned.out)] == [oldest]
    assert sorted(p.name for p in env.folder.iterdir()) == newest

    latest = env.cli("backup", "verify", "latest", cwd=fresh)
    assert latest.code == 0, latest
    assert newest[-1] in latest.out


def test_a_partial_upload_is_never_listed(stored: SftpEnv) -> None:
    env = stored
    complete = set_create.create(env.settings(), stores=["redis"])
    # An upload cut short: the files of a newer set without its manifest, which goes last.
    partial = env.folder / "29990101T000000.000Z"
    shutil.copytree(env.folder / complete.set_id, partial)
    (partial / MANIFEST_NAME).unlink()
    shutil.rmtree(env.backups)

    listed = env.cli("backup", "list", "--json")
    assert listed.code == 0, listed
    assert [s["set_id"] for s in json.loads(listed.out)] == [complete.set_id]
    missing = env.cli("backup", "verify", partial.name)
    assert missing.code == ExitCode.USAGE, missing
    assert "no backup set" in missing.err


# -- faults: the backup fails before it is taken, nothing changes -----------------------


def assert_refused(env: SftpEnv, run: Run, *reasons: str) -> str:
    """Exit 3 with one ``error:`` line naming the destination, no set anywhere."""
    assert run.code == ExitCode.INFRA, run
    [line] = run.err.strip().splitlines()
    assert line.startswith("error: backup destination sftp://"), line
    for reason in reasons:
        assert reason in line, line
    assert not env.backups.exists() or list(env.backups.iterdir()) == []
    assert env.remote_files() == []
    return line


def test_an_unreachable_backup_host_fails_the_backup(stored: SftpEnv) -> None:
    env = stored
    env.use_destination(f"sftp://root@{env.host.address}:{free_port()}{env.folder}")
    assert_refused(env, env.cli("backup", "create"), "unreachable")
    assert backup_runs(env) == []


def test_a_key_the_backup_host_refuses_fails_the_backup(stored: SftpEnv, tmp_path: Path) -> None:
    env = stored
    wrong_key = tmp_path / "wrong_key"
    new_key_pair(wrong_key)
    run = env.cli("backup", "create", RELEASEGATE_SSH_IDENTITY_FILE=str(wrong_key))
    assert_refused(env, run, "wrong credentials")
    assert str(wrong_key) not in run.err and "PRIVATE KEY" not in run.err
    assert backup_runs(env) == []


def test_a_host_key_mismatch_fails_the_backup(stored: SftpEnv, tmp_path: Path) -> None:
    env = stored
    known_hosts = other_known_hosts(env.host, tmp_path)
    pinned = known_hosts.read_text()
    run = env.cli("backup", "create", RELEASEGATE_SSH_KNOWN_HOSTS=str(known_hosts))
    assert_refused(env, run, "host key mismatch")
    assert known_hosts.read_text() == pinned  # never trusted on first use
    assert backup_runs(env) == []


def test_a_missing_folder_on_the_backup_host_fails_the_backup(stored: SftpEnv) -> None:
    env = stored
    env.use_destination(env.destination + "-missing")
    assert_refused(env, env.cli("backup", "create"), "cannot use the folder")
    assert backup_runs(env) == []


@contextmanager
def small_disk(folder: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs (four pages, less than a set) mounted at ``folder``, which the backup
    host sees (the namespace shares this machine's mounts); unmounted afterwards."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=True)


@pytest.fixture
def full_disk(stored: SftpEnv) -> Iterator[Path]:
    with small_disk(stored.folder) as folder:
        yield folder


def test_a_full_backup_host_fails_the_backup_before_and_after_it_is_taken(
    stored: SftpEnv, full_disk: Path
) -> None:
    env = stored
    filler = full_disk / "filler"
    filler.write_bytes(os.urandom(shutil.disk_usage(full_disk).free))
    assert shutil.disk_usage(full_disk).free == 0

    # No space at all: the preflight refuses, before the backup is taken.
    run = env.cli("backup", "create")
    assert run.code == ExitCode.INFRA, run
    [line] = run.err.strip().splitlines()
    assert "no space left on the backup host" in line, line
    assert env.remote_files() == ["filler"]
    assert backup_runs(env) == []

    # Some space, less than the set: the set is taken here, refused there, removed here.
    filler.unlink()
    run = env.cli("backup", "create")
    line = assert_refused(env, run, "cannot upload backup set", "not enough space")
    assert "needed" in line and "free" in line
    assert backup_runs(env) == ["failed"]


def test_a_disk_that_fills_up_during_the_upload_leaves_no_set(
    remote_host: RemoteHost, tmp_path: Path
) -> None:
    # Eight 100-byte files: 800 bytes pass the free-space check (16 KiB), but each file
    # takes a 4 KiB page of the tmpfs, so the fifth one finds the disk full.
    set_id = "20260101T000000.000Z"
    local = tmp_path / "set" / set_id
    local.mkdir(parents=True)
    for i in range(7):
        (local / f"part-{i}.bin").write_bytes(os.urandom(100))
    (local / MANIFEST_NAME).write_text("{}")
    remote = tmp_path / "backup-host"
    remote.mkdir()
    location = SftpLocation.parse(f"sftp://{remote_host.ssh_user}@{remote_host.address}{remote}")
    tunnel = SshTunnel(
        location.target,
        known_hosts=remote_host.known_hosts,
        identity_file=remote_host.ssh_key,
        connect_timeout=5,
    )
    folder = SftpFolder(location, tunnel)
    with tunnel, small_disk(remote):
        folder.check()
        with pytest.raises(InfraError) as failed:
            folder.put_set(local, set_id)
        message = str(failed.value)
        assert message.startswith(f"backup destination {location}: cannot upload backup set")
        assert "no space left on the backup host" in message and "\n" not in message
        # What reached the disk was removed: nothing is listed, nothing is left.
        assert folder.list_sets() == []
        assert list(remote.iterdir()) == []
