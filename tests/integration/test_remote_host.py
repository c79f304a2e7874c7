"""The simulated remote host, reached only the way a CI runner reaches a production host.

Every check goes over a real connection: the docker CLI through ``DOCKER_HOST=ssh://``
with the pinned host key, an image pushed from the runner's engine to the remote
registry and run on the remote engine by digest, a host-network container, PostgreSQL
and Redis with their credentials. Traffic goes only to the remote host's own address or
to the runner's loopback (to show that nothing of the remote host answers there).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import psycopg
import pytest
import redis
from conftest import ensure_base_image, free_port
from redis.backoff import NoBackoff
from redis.retry import Retry
from remote_host import RemoteHost

LOOPBACK = "127.0.0.1"


def remote_listeners(host: RemoteHost) -> dict[int, set[str]]:
    """Listening TCP sockets inside the remote host's namespace: port -> bound addresses."""
    listing = subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{host.namespace}", "ss", "-ltnH"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    listeners: dict[int, set[str]] = {}
    for line in listing.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        listeners.setdefault(int(port), set()).add(address)
    return listeners


def test_every_service_listens_on_the_remote_address_only(remote_host: RemoteHost) -> None:
    listeners = remote_listeners(remote_host)
    registry_port = int(remote_host.registry.rpartition(":")[2])
    for port in (remote_host.ssh_port, registry_port):
        assert listeners.get(port) == {remote_host.address}, (port, listeners.get(port))
    # The stores also on the namespace's own loopback, for ssh forwards (via_ssh): that
    # address inside the namespace is not the runner's.
    for port in (remote_host.postgres_port, remote_host.redis_port):
        expected = {remote_host.address, LOOPBACK}
        assert listeners.get(port) == expected, (port, listeners.get(port))


def test_docker_cli_reaches_the_remote_engine_over_ssh(remote_host: RemoteHost) -> None:
    info = remote_host.docker("info", "--format", "{{.DockerRootDir}}")
    assert info.returncode == 0, info.stderr
    assert info.stdout.strip() == str(remote_host.state_dir / "docker")
    runner_root = docker.from_env().info()["DockerRootDir"]
    assert runner_root != info.stdout.strip()


def write_ssh_wrapper(bin_dir: Path, ssh_config: Path, known_hosts: Path) -> Path:
    """An `ssh` for Docker's helper that pins ``known_hosts`` instead of the real one."""
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    pin = f'-o "UserKnownHostsFile={known_hosts}"'
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F "{ssh_config}" {pin} "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("case", "refusal"),
    [
        ("another key pinned", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
        ("nothing pinned", "Host key verification failed"),
    ],
)
def test_an_unpinned_host_key_is_refused(
    remote_host: RemoteHost, tmp_path: Path, case: str, refusal: str
) -> None:
    known_hosts = tmp_path / "known_hosts"
    pinned = ""
    if case == "another key pinned":
        other_key = tmp_path / "other_host_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
        )
        key_type, key = other_key.with_suffix(".pub").read_text().split()[:2]
        pinned = f"{remote_host.address} {key_type} {key}\n"
    known_hosts.write_text(pinned)
    bin_dir = write_ssh_wrapper(tmp_path / "bin", remote_host.ssh_config, known_hosts)
    env = {**remote_host.docker_env(), "PATH": f"{bin_dir}:{remote_host.docker_env()['PATH']}"}
    info = subprocess.run(
        ["docker", "info", "--format", "{{.DockerRootDir}}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert info.returncode != 0
    assert refusal in info.stderr
    # No trust on first use: the refusal wrote nothing into the pinned file.
    assert known_hosts.read_text() == pinned


@pytest.fixture(scope="module")
def pushed_image(remote_host: RemoteHost) -> Iterator[str]:
    """The base image pushed from the runner's engine to the remote registry, by digest."""
    runner = docker.from_env()
    base = runner.images.get(ensure_base_image(runner))
    repository = f"{remote_host.registry}/releasegate-remote-test"
    tag = uuid.uuid4().hex[:12]
    base.tag(repository, tag)
    digest_ref = ""
    try:
        # docker-py reports a failed push in its output, not as an exception.
        push_output = runner.images.push(repository, tag=tag)
        pushed = runner.images.get(f"{repository}:{tag}")
        digests = [d for d in pushed.attrs["RepoDigests"] if d.startswith(f"{repository}@")]
        assert digests, push_output
        digest_ref = digests[0]
        yield digest_ref
    finally:
        runner.images.remove(f"{repository}:{tag}")
        if digest_ref:
            remote_host.docker("image", "rm", "--force", digest_ref)


@pytest.mark.slow
def test_an_image_pushed_from_the_runner_runs_on_the_remote_engine_by_digest(
    remote_host: RemoteHost, pushed_image: str
) -> None:
    ran = remote_host.docker(
        "run", "--rm", "--network", "host", pushed_image, "python3", "-c", "print('ran remotely')"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "ran remotely"
    digests = remote_host.docker(
        "image", "inspect", "--format", "{{json .RepoDigests}}", pushed_image
    )
    assert digests.returncode == 0, digests.stderr
    assert pushed_image in digests.stdout


@pytest.mark.slow
def test_a_host_network_container_answers_on_the_remote_address_only(
    remote_host: RemoteHost, pushed_image: str
) -> None:
    # Free on the runner's loopback, so an answer there could only come from the container.
    port = free_port()
    name = f"rg-remote-http-{uuid.uuid4().hex[:8]}"
    started = remote_host.docker(
        "run", "-d", "--name", name, "--network", "host", pushed_image,
        "python3", "-m", "http.server", str(port),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://{remote_host.address}:{port}/", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert answer.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{LOOPBACK}:{port}/", timeout=2)
    finally:
        remote_host.docker("rm", "--force", name)


def test_postgres_answers_at_the_remote_address_with_its_credentials(
    remote_host: RemoteHost,
) -> None:
    with psycopg.connect(remote_host.postgres_url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT host(inet_server_addr()), current_setting('server_version_num')::int,"
            " (SELECT system_identifier FROM pg_control_system())"
        ).fetchone()
    assert row is not None
    server_address, version, system_identifier = row
    assert server_address == remote_host.address
    assert version // 10000 == 15
    wrong_password = remote_host.postgres_url.replace("@", "x@", 1)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong_password, connect_timeout=5).close()
    # The same credentials at the runner's loopback do not reach this server.
    at_loopback = remote_host.postgres_url.replace(f"@{remote_host.address}:", f"@{LOOPBACK}:")
    try:
        with psycopg.connect(at_loopback, connect_timeout=5) as conn:
            other = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        assert other is not None and other[0] != system_identifier
    except psycopg.OperationalError:
        pass


def test_redis_answers_at_the_remote_address_with_its_password(remote_host: RemoteHost) -> None:
    client = redis.Redis.from_url(remote_host.redis_url, socket_timeout=5)
    try:
        assert client.ping() is True
        run_id = client.info("server")["run_id"]
    finally:
        client.close()
    # No retries: redis-py counts a refused AUTH as a connection error and backs off.
    without_password = redis.Redis(
        host=remote_host.address,
        port=remote_host.redis_port,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        with pytest.raises(redis.AuthenticationError):
            without_password.ping()
    finally:
        without_password.close()
    # The same password at the runner's loopback does not reach this server.
    at_loopback = redis.Redis.from_url(
        remote_host.redis_url.replace(f"@{remote_host.address}:", f"@{LOOPBACK}:"),
        socket_timeout=5,
    )
    try:
        assert at_loopback.info("server")["run_id"] != run_id
    except (redis.RedisError, OSError):
        pass
    finally:
        at_loopback.close()
