"""The ssh transport against the simulated remote host (tests/remote_host.py).

Every check goes over a real OpenSSH connection with the pinned host key: the Docker
client through the forwarded engine socket, ``releasegate ps`` and ``deploy`` with
``DOCKER_HOST=ssh://``, and readiness traffic through the tunnel. Traffic goes only to
the remote host's own address or to this machine's loopback.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import docker
import httpx
import psycopg
import pytest
import redis
import requests
from conftest import ensure_base_image, free_ports
from remote_host import RemoteHost, new_key_pair, other_known_hosts, ssh_env

from releasegate.config import load_config
from releasegate.errors import ExitCode, InfraError
from releasegate.hosts.ssh import SshTarget, SshTunnel
from releasegate.hosts.transport import close_ssh_hosts

RELEASEGATE = Path(sys.executable).parent / "releasegate"


def tunnel_to(
    host: RemoteHost, known_hosts: Path | None = None, port: int | None = None
) -> SshTunnel:
    return SshTunnel(
        SshTarget(host=host.address, user=host.ssh_user, port=port),
        known_hosts=known_hosts or host.known_hosts,
        identity_file=host.ssh_key,
        connect_timeout=5,
    )


def remote_engine_id(host: RemoteHost) -> str:
    info = host.docker("info", "--format", "{{.ID}}")
    assert info.returncode == 0, info.stderr
    return info.stdout.strip()


def test_docker_through_the_tunnel_reaches_the_remote_engine(remote_host: RemoteHost) -> None:
    with tunnel_to(remote_host) as tunnel:
        local_socket = tunnel.forward_socket(remote_host.docker_socket)
        client = docker.DockerClient(base_url=f"unix://{local_socket}", timeout=30)
        try:
            info = client.info()
        finally:
            client.close()
        assert local_socket != Path(remote_host.docker_socket)
        # The forwarded engine socket sits in a folder only this user can enter.
        assert local_socket.parent.stat().st_mode & 0o777 == 0o700
    # Both engines share /etc/docker (so the ID): the data root tells them apart.
    assert info["ID"] == remote_engine_id(remote_host)
    assert info["DockerRootDir"] == str(remote_host.state_dir / "docker")
    assert info["DockerRootDir"] != docker.from_env().info()["DockerRootDir"]
    # Closing ends the master and removes the private folder with its sockets.
    assert not tunnel.is_open
    assert not local_socket.parent.exists()


def test_a_dropped_connection_comes_back_with_the_same_local_endpoints(
    remote_host: RemoteHost,
) -> None:
    registry_port = int(remote_host.registry.rpartition(":")[2])
    with tunnel_to(remote_host) as tunnel:
        local_socket = tunnel.forward_socket(remote_host.docker_socket)
        local_port = tunnel.forward_port(remote_host.address, registry_port)
        client = docker.DockerClient(base_url=f"unix://{local_socket}", timeout=30)
        try:
            assert client.ping()
            # The connection ends under the client (the master killed, as a reset does).
            master = tunnel._master
            assert master is not None
            master.kill()
            master.wait()
            with pytest.raises(requests.exceptions.ConnectionError):
                client.ping()
            tunnel.open()
            # The client made before the drop works again, at the same socket and port.
            assert client.ping()
            assert tunnel.forward_socket(remote_host.docker_socket) == local_socket
            assert tunnel.forward_port(remote_host.address, registry_port) == local_port
            with socket.create_connection(("127.0.0.1", local_port), timeout=10):
                pass
            assert tunnel.drops == 1
        finally:
            client.close()


def test_stores_via_ssh_are_reached_at_the_hosts_own_loopback(
    remote_host: RemoteHost, tmp_path: Path
) -> None:
    """URLs as the host sees them (its loopback, which the runner cannot reach); the
    settings hand out local forwards to them."""
    at_address = f"@{remote_host.address}:"
    config = tmp_path / "releasegate.toml"
    config.write_text(
        '[service]\nname = "svc"\n[postgres]\nvia_ssh = true\n[redis]\nvia_ssh = true\n'
    )
    env = {
        **ssh_env(remote_host),
        "DATABASE_URL": remote_host.postgres_url.replace(at_address, "@127.0.0.1:"),
        "REDIS_URL": remote_host.redis_url.replace(at_address, "@127.0.0.1:"),
    }
    settings = load_config(config, env)
    try:
        postgres_url = settings.postgres_url()
        assert postgres_url.startswith("postgresql://")
        assert urlsplit(postgres_url).port != remote_host.postgres_port
        with psycopg.connect(postgres_url, connect_timeout=10) as conn:
            row = conn.execute("SELECT host(inet_server_addr())").fetchone()
        assert row == ("127.0.0.1",)  # the host's loopback, through the forward
        client = redis.Redis.from_url(settings.redis_url(), socket_timeout=10)
        try:
            assert client.ping() is True
        finally:
            client.close()
    finally:
        close_ssh_hosts()


def test_a_forwarded_port_reaches_the_remote_hosts_own_view(remote_host: RemoteHost) -> None:
    registry_port = int(remote_host.registry.rpartition(":")[2])
    with tunnel_to(remote_host) as tunnel:
        # The registry listens on the remote address only: seen from there, not from its loopback.
        assert tunnel.accepts(remote_host.address, registry_port)
        assert not tunnel.accepts("127.0.0.1", registry_port)
        local_port = tunnel.forward_port(remote_host.address, registry_port)
        # The registry's own certificate (for the remote address) answers on the local port.
        context = ssl.create_default_context(cafile=str(remote_host.registry_ca))
        with (
            socket.create_connection(("127.0.0.1", local_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=remote_host.address) as tls,
        ):
            assert tls.version() is not None


# Runs in the remote host's namespace: a unix socket server that answers each
# connection with one line and closes it, the way HAProxy's runtime API does.
ANSWER_AND_CLOSE = """\
import os, socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.recv(1024)
    conn.sendall(b"ok\\n")
    conn.close()
"""


def test_a_forwarded_exchange_does_not_wait_for_a_delayed_ack(
    remote_host: RemoteHost, tmp_path: Path
) -> None:
    # A connection that only forwards keeps Nagle on at sshd: the close that ends each
    # exchange then waits ~40 ms for the runner's delayed ACK (every router switch did).
    remote_socket = tmp_path / "answer.sock"
    server = subprocess.Popen(
        ["nsenter", f"--net=/var/run/netns/{remote_host.namespace}", sys.executable, "-c",
         ANSWER_AND_CLOSE, str(remote_socket)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with tunnel_to(remote_host) as tunnel:
            local_socket = tunnel.forward_socket(str(remote_socket))
            took = []
            for _ in range(10):
                started = time.perf_counter()
                with socket.socket(socket.AF_UNIX) as client:
                    client.settimeout(5)
                    client.connect(str(local_socket))
                    client.sendall(b"show info\n")
                    answer = b""
                    while chunk := client.recv(1024):
                        answer += chunk
                took.append(time.perf_counter() - started)
                assert answer == b"ok\n"
        assert statistics.median(took) < 0.02, f"round trips: {took}"
    finally:
        server.kill()
        server.wait()


def test_another_pinned_key_is_a_host_key_mismatch(remote_host: RemoteHost, tmp_path: Path) -> None:
    known_hosts = other_known_hosts(remote_host, tmp_path)
    pinned = known_hosts.read_text()
    with pytest.raises(InfraError, match="host key mismatch") as refused:
        tunnel_to(remote_host, known_hosts=known_hosts).open()
    assert "\n" not in str(refused.value)
    # Never trust on first use: nothing was written to the pinned file.
    assert known_hosts.read_text() == pinned


def test_a_port_where_no_sshd_listens_is_unreachable(remote_host: RemoteHost) -> None:
    with pytest.raises(InfraError, match="unreachable"):
        tunnel_to(remote_host, port=2222).open()


def test_a_key_the_host_does_not_know_is_wrong_credentials(
    remote_host: RemoteHost, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger_key"
    new_key_pair(stranger)
    tunnel = SshTunnel(
        SshTarget(host=remote_host.address, user=remote_host.ssh_user),
        known_hosts=remote_host.known_hosts,
        identity_file=stranger,
        connect_timeout=5,
    )
    with pytest.raises(InfraError, match="wrong credentials"):
        tunnel.open()


# -- the CLI with DOCKER_HOST=ssh:// ---------------------------------------------------


def write_config(folder: Path, service: str, blue: int, green: int) -> Path:
    path = folder / "releasegate.toml"
    path.write_text(
        f"""\
[service]
name = "{service}"

[deploy]
network = "host"
port_env = "PORT"
blue_port = {blue}
green_port = {green}
readiness_path = "/"
ready_timeout = "30s"
memory = "128m"
"""
    )
    return path


def releasegate(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RELEASEGATE), "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def service(remote_host: RemoteHost) -> Iterator[str]:
    """A unique service name; its containers on the remote engine are removed afterwards."""
    name = f"rgssh-{uuid.uuid4().hex[:8]}"
    yield name
    for color in ("blue", "green"):
        remote_host.docker("rm", "--force", f"{name}-{color}")


def empty_remote_image(host: RemoteHost, name: str) -> None:
    """An image with one empty layer on the remote engine, made without a registry."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w"):
        pass
    imported = subprocess.run(
        ["docker", "import", "-", name],
        input=archive.getvalue(),
        env=host.docker_env(),
        capture_output=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr


def test_ps_lists_the_remote_engines_containers(
    remote_host: RemoteHost, service: str, tmp_path: Path
) -> None:
    image = f"rgssh-empty:{service}"
    empty_remote_image(remote_host, image)
    try:
        created = remote_host.docker(
            "create", "--name", f"{service}-blue",
            "--label", f"releasegate.service={service}", "--label", "releasegate.color=blue",
            image, "/none",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        config = write_config(tmp_path, service, *free_ports(2))
        listed = releasegate(config, ssh_env(remote_host), "ps", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["color"]: row for row in json.loads(listed.stdout)}
        assert rows["blue"]["container"] == f"{service}-blue"
        assert rows["blue"]["state"] == "created"
        assert rows["green"]["state"] == "absent"
    finally:
        remote_host.docker("rm", "--force", f"{service}-blue")
        remote_host.docker("image", "rm", "--force", image)


@pytest.mark.parametrize("case", ["host key mismatch", "unreachable"])
def test_cli_refuses_an_unusable_ssh_host_in_one_line(
    remote_host: RemoteHost, tmp_path: Path, case: str
) -> None:
    config = write_config(tmp_path, "rgssh-refused", *free_ports(2))
    if case == "host key mismatch":
        env = ssh_env(remote_host, known_hosts=other_known_hosts(remote_host, tmp_path))
    else:
        env = {**ssh_env(remote_host), "DOCKER_HOST": f"{remote_host.docker_host}:2222"}
    listed = releasegate(config, env, "ps")
    assert listed.returncode == ExitCode.INFRA, listed.stderr
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:") and case in lines[0], lines


# -- a color deployed on the remote engine (slow: builds and pushes an image) ---------

SERVER_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
CMD ["sh", "-c", "exec python3 -m http.server --bind 127.0.0.1 \\"$PORT\\""]
"""


@pytest.fixture(scope="module")
def server_image(
    remote_host: RemoteHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An HTTP server image (listening on $PORT) pushed to the remote registry, by digest."""
    runner = docker.from_env()
    context = tmp_path_factory.mktemp("server")
    (context / "Dockerfile").write_text(SERVER_DOCKERFILE)
    repository = f"{remote_host.registry}/releasegate-ssh-test"
    tag = uuid.uuid4().hex[:12]
    runner.images.build(
        path=str(context),
        tag=f"{repository}:{tag}",
        buildargs={"BASE_IMAGE": ensure_base_image(runner)},
        rm=True,
        network_mode="none",
    )
    digest_ref = ""
    try:
        push_output = runner.images.push(repository, tag=tag)
        pushed = runner.images.get(f"{repository}:{tag}")
        digests = [d for d in pushed.attrs["RepoDigests"] if d.startswith(f"{repository}@")]
        assert digests, push_output
        digest_ref = digests[0]
        yield digest_ref
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            runner.images.remove(f"{repository}:{tag}", force=True)
        if digest_ref:
            remote_host.docker("image", "rm", "--force", digest_ref)


@pytest.mark.slow
def test_deploy_runs_a_color_remotely_and_checks_readiness_through_the_tunnel(
    remote_host: RemoteHost, service: str, server_image: str, tmp_path: Path
) -> None:
    blue, green = free_ports(2)
    config = write_config(tmp_path, service, blue, green)
    deployed = releasegate(
        config, ssh_env(remote_host), "deploy", "--color", "blue", "--image", server_image,
        "--no-ledger", "--json",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    result = json.loads(deployed.stdout)
    assert result["container"] == f"{service}-blue"
    assert result["port"] == blue
    running = remote_host.docker("inspect", "--format", "{{.State.Status}}", f"{service}-blue")
    assert running.stdout.strip() == "running", running.stderr
    # Not on this machine's engine, and the server listens on the remote loopback only:
    # readiness could only pass through the tunnel.
    assert not docker.from_env().containers.list(
        all=True, filters={"label": f"releasegate.service={service}"}
    )
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{blue}/", timeout=2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{remote_host.address}:{blue}/", timeout=2)
    # A second deploy to the same color finds and replaces the remote container.
    again = releasegate(
        config, ssh_env(remote_host), "deploy", "--color", "blue", "--image", server_image,
        "--no-ledger", "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["replaced"] == f"{service}-blue"
