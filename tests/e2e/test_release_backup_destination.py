"""A release keeps its restore point at the backup destination, or stops before it changes
anything.

The backup step comes before migrate: when the set cannot be kept at its destination
(an S3 endpoint on a closed port; a backup host that is unreachable, refuses the key,
shows another host key or has a full disk), the release fails at
``backup`` with nothing to roll back, blue v1 still serving and the stores at their
versions. When it can, the set is on the backup host (the simulated remote host's sshd,
tests/remote_host.py) and a fresh working directory lists and verifies it by id.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from release_env import RELEASEGATE, ReleaseEnv, ensure_images, open_release_env
from remote_host import RemoteHost, new_key_pair, other_known_hosts

from releasegate.errors import ExitCode

pytestmark = pytest.mark.slow


@pytest.fixture
def release_env(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[ReleaseEnv]:
    ensure_images()
    with open_release_env(tmp_path / "project", pg_url, redis_url) as env:
        yield env


def assert_stopped_at_backup(env: ReleaseEnv, result: subprocess.CompletedProcess[str]) -> Any:
    """The release failed at its backup step, exit 3 (the destination is infrastructure),
    and nothing was changed; its JSON report."""
    assert result.returncode == ExitCode.INFRA, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["outcome"] == "failed" and "rollback" not in data
    assert "nothing was changed" in data["error"]
    steps = {e["step"]: e["status"] for e in env.events(data["release_id"])}
    assert steps["backup"] == "failed" and "migrate" not in steps
    assert env.versions()["postgres"] == "0002"
    assert env.serving() == {"blue:v1": 6}
    assert env.container_colors() == {"blue": "notes:v1"}
    backups = env.root / ".releasegate" / "backups"
    assert not backups.exists() or list(backups.iterdir()) == []
    return data


def test_unreachable_destination_stops_the_release_before_any_change(
    release_env: ReleaseEnv,
) -> None:
    env = release_env
    closed = f"http://127.0.0.1:{free_port()}"
    result = env.run(
        "release",
        "--image",
        "notes:v2",
        "--allow-contract",
        "--json",
        env={
            "RELEASEGATE_BACKUP__DESTINATION": "s3://rg-releases/notes",
            "RELEASEGATE_BACKUP__ENDPOINT_URL_ENV": "RG_S3_ENDPOINT",
            "RG_S3_ENDPOINT": closed,
            "AWS_ACCESS_KEY_ID": "rg-test-key",
            "AWS_SECRET_ACCESS_KEY": "rg-test-secret-value",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    assert "rg-test-secret-value" not in result.stdout + result.stderr
    data = assert_stopped_at_backup(env, result)
    assert data["error"].startswith("backup: backup destination s3://rg-releases/notes/")


# -- a backup host reached over SFTP -------------------------------------------------------


@pytest.fixture
def backup_host_folder(remote_host: RemoteHost, tmp_path: Path) -> Path:
    """A folder the backup host's sshd writes to (the namespace shares this machine's mounts)."""
    folder = tmp_path / "backup-host" / "sets"
    folder.mkdir(parents=True)
    return folder


def sftp_env(host: RemoteHost, folder: Path) -> dict[str, str]:
    """What a CI job sets for an SFTP destination: the URL and the pinned key files."""
    return {
        "RELEASEGATE_BACKUP__DESTINATION": f"sftp://{host.ssh_user}@{host.address}{folder}",
        "RELEASEGATE_SSH_KNOWN_HOSTS": str(host.known_hosts),
        "RELEASEGATE_SSH_IDENTITY_FILE": str(host.ssh_key),
    }


def test_release_keeps_its_restore_point_on_the_backup_host(
    release_env: ReleaseEnv, remote_host: RemoteHost, backup_host_folder: Path, tmp_path: Path
) -> None:
    env = release_env
    destination = sftp_env(remote_host, backup_host_folder)
    result = env.run(
        "release", "--image", "notes:v2", "--allow-contract", "--json", env=destination
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(result.stdout)
    set_id = data["backup"]["set_id"]
    assert (backup_host_folder / set_id / "manifest.json").is_file()

    # Another runner: the project without .releasegate/, the set fetched by id.
    fresh = tmp_path / "fresh"
    runtime = shutil.ignore_patterns(".releasegate", "rt", "__pycache__")  # state, sockets
    shutil.copytree(env.root, fresh, ignore=runtime)
    fresh_env = {**destination, "RELEASEGATE_CONFIG": str(fresh / "releasegate.toml")}

    def in_fresh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RELEASEGATE), *args],
            cwd=fresh,
            env={**env.env, **fresh_env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    listed = in_fresh("backup", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    assert (item["set_id"], item["local"], item["at_destination"]) == (set_id, False, True)
    verified = in_fresh("backup", "verify", set_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout
    assert (fresh / ".releasegate" / "backups" / set_id / "manifest.json").is_file()


@contextmanager
def backup_host_fault(
    fault: str, host: RemoteHost, folder: Path, scratch: Path
) -> Iterator[dict[str, str]]:
    """The environment of a release whose backup host is unreachable, refuses the key,
    shows another host key, or has a full disk (a 16 KiB tmpfs at the folder: less than
    the release's set; unmounted afterwards)."""
    env = sftp_env(host, folder)
    if fault == "unreachable":  # a port of the host where nothing listens
        env["RELEASEGATE_BACKUP__DESTINATION"] = (
            f"sftp://{host.ssh_user}@{host.address}:{free_port()}{folder}"
        )
    elif fault == "wrong credentials":
        new_key_pair(scratch / "stranger")
        env["RELEASEGATE_SSH_IDENTITY_FILE"] = str(scratch / "stranger")
    elif fault == "host key mismatch":
        env["RELEASEGATE_SSH_KNOWN_HOSTS"] = str(other_known_hosts(host, scratch))
    if fault != "not enough space":
        yield env
        return
    mount = ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)]
    mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield env
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=True)


@pytest.mark.parametrize(
    "fault", ["unreachable", "wrong credentials", "host key mismatch", "not enough space"]
)
def test_a_backup_host_fault_stops_the_release_before_any_change(
    release_env: ReleaseEnv,
    remote_host: RemoteHost,
    backup_host_folder: Path,
    tmp_path: Path,
    fault: str,
) -> None:
    env = release_env
    with backup_host_fault(fault, remote_host, backup_host_folder, tmp_path) as destination:
        result = env.run("release", "--image", "notes:v2", "--json", env=destination)
        data = assert_stopped_at_backup(env, result)
        [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert line.startswith("error: failed: backup: backup destination sftp://"), line
        assert fault in line and fault in data["error"], line
        assert list(backup_host_folder.iterdir()) == []
