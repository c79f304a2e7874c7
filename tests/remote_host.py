"""The simulated remote host (scripts/lib/remote-host.sh) as a session-scoped fixture.

A network namespace with an address of its own runs sshd, dockerd, a TLS registry,
PostgreSQL and Redis, each listening on that address only, so tests reach it the way a
CI runner reaches a production host: ``DOCKER_HOST=ssh://root@ADDR`` with a pinned host
key, images pushed to ``ADDR:5000``, databases at ``ADDR``. Needs root.

Only the session that brought the host up takes it down; one already running (started by
hand, see docs/remote-host.md) is used and left as it was.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "lib" / "remote-host.sh"
# The script's exit code when the kernel or container refuses a network namespace.
NETNS_UNSUPPORTED = 3


@dataclass(frozen=True)
class RemoteHost:
    """Where the simulated remote host answers and the credentials to reach it."""

    address: str
    namespace: str
    state_dir: Path
    ssh_user: str
    ssh_port: int
    ssh_key: Path
    known_hosts: Path
    ssh_config: Path
    # Holds an `ssh` that brings ssh_config: Docker's ssh:// helper runs plain `ssh`.
    ssh_path_dir: Path
    docker_host: str
    # The remote engine's socket as a path on the remote host (what sshd's DOCKER_HOST names).
    docker_socket: str
    registry: str
    registry_ca: Path
    postgres_port: int
    redis_port: int
    # The URLs carry passwords: kept out of repr, so out of assertion messages.
    postgres_url: str = field(repr=False)
    redis_url: str = field(repr=False)

    def docker_env(self) -> dict[str, str]:
        """Process environment for the docker CLI to talk to the remote engine over ssh."""
        return {
            **os.environ,
            "DOCKER_HOST": self.docker_host,
            "PATH": f"{self.ssh_path_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against the remote engine (not checked: callers look at the result)."""
        return subprocess.run(
            ["docker", *args],
            env=self.docker_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def ssh_env(host: RemoteHost, known_hosts: Path | None = None) -> dict[str, str]:
    """What a CI job sets: DOCKER_HOST and the pinned key files (no ssh_config, no agent)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASEGATE_")}
    return {
        **env,
        "DOCKER_HOST": host.docker_host,
        "RELEASEGATE_SSH_KNOWN_HOSTS": str(known_hosts or host.known_hosts),
        "RELEASEGATE_SSH_IDENTITY_FILE": str(host.ssh_key),
        "RELEASEGATE_DEPLOY__REMOTE_DOCKER_SOCKET": host.docker_socket,
    }


def new_key_pair(private_key: Path) -> None:
    """An ed25519 key pair (no passphrase) that no host knows: ``private_key`` and ``.pub``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private_key)], check=True
    )


def other_known_hosts(host: RemoteHost, folder: Path) -> Path:
    """A known_hosts file that pins another key for the remote address."""
    other_key = folder / "other_host_key"
    new_key_pair(other_key)
    key_type, key = other_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"{host.address} {key_type} {key}\n")
    return known_hosts


def load_on_remote(host: RemoteHost, image: str) -> None:
    """``docker save`` here, ``docker load`` on the remote engine (no registry needed)."""
    if host.docker("image", "inspect", image).returncode == 0:
        return
    saved = subprocess.run(["docker", "save", image], capture_output=True, check=True, timeout=120)
    loaded = subprocess.run(
        ["docker", "load"],
        input=saved.stdout,
        env=host.docker_env(),
        capture_output=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr


def _state_dir() -> Path:
    return Path(os.environ.get("RELEASEGATE_REMOTE_STATE_DIR", "/var/lib/releasegate/remote-host"))


def _namespace() -> str:
    return os.environ.get("RELEASEGATE_REMOTE_NS", "rg-remote")


def _run_script(function: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; {function}'],
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_remote_host(state_dir: Path) -> RemoteHost:
    """The running host's facts from the env file the script writes, passwords from theirs."""
    facts: dict[str, str] = {}
    for line in (state_dir / "remote-host.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key] = value
    address = facts["REMOTE_ADDRESS"]
    pg_password = Path(facts["REMOTE_PG_PASSWORD_FILE"]).read_text().strip()
    redis_password = Path(facts["REMOTE_REDIS_PASSWORD_FILE"]).read_text().strip()
    return RemoteHost(
        address=address,
        namespace=facts["REMOTE_NAMESPACE"],
        state_dir=state_dir,
        ssh_user=facts["REMOTE_SSH_USER"],
        ssh_port=int(facts["REMOTE_SSH_PORT"]),
        ssh_key=Path(facts["REMOTE_SSH_KEY"]),
        known_hosts=Path(facts["REMOTE_KNOWN_HOSTS"]),
        ssh_config=Path(facts["REMOTE_SSH_CONFIG"]),
        ssh_path_dir=Path(facts["REMOTE_SSH_PATH_DIR"]),
        docker_host=facts["REMOTE_DOCKER_HOST"],
        docker_socket=facts["REMOTE_DOCKER_SOCKET"].removeprefix("unix://"),
        registry=facts["REMOTE_REGISTRY"],
        registry_ca=Path(facts["REMOTE_REGISTRY_CA"]),
        postgres_port=int(facts["REMOTE_PG_PORT"]),
        redis_port=int(facts["REMOTE_REDIS_PORT"]),
        postgres_url=(
            f"postgresql://{facts['REMOTE_PG_USER']}:{pg_password}"
            f"@{address}:{facts['REMOTE_PG_PORT']}/postgres"
        ),
        redis_url=f"redis://:{redis_password}@{address}:{facts['REMOTE_REDIS_PORT']}/0",
    )


@pytest.fixture(scope="session")
def remote_host() -> Iterator[RemoteHost]:
    """The simulated remote host, started for the session (skipped where it cannot run)."""
    if os.geteuid() != 0:
        pytest.skip("the simulated remote host needs root (network namespaces, sshd, dockerd)")
    if not Path("/proc/self/ns/net").exists():
        pytest.skip("this kernel has no network namespaces")
    already_running = Path("/var/run/netns", _namespace()).exists()
    started = _run_script("start_remote_host")
    if started.returncode == NETNS_UNSUPPORTED:
        pytest.skip(f"network namespaces are not allowed here: {started.stderr.strip()[-300:]}")
    if started.returncode != 0:
        pytest.fail(
            f"start_remote_host failed ({started.returncode}):\n{started.stderr[-3000:]}",
            pytrace=False,
        )
    try:
        yield read_remote_host(_state_dir())
    finally:
        if not already_running:
            stopped = _run_script("stop_remote_host")
            assert stopped.returncode == 0, stopped.stderr[-3000:]
