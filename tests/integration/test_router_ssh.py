"""The router on the simulated remote host (tests/remote_host.py), driven over ssh.

With ``DOCKER_HOST=ssh://`` the CLI runs HAProxy in a container on the remote engine,
keeps its config and state in a volume there and switches traffic through the admin
socket forwarded over the ssh connection. Blue and green are HTTP servers on the
remote host's loopback, and the client asks from inside the remote host's namespace:
only what runs there can serve it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_ports, local_haproxy_image
from remote_host import RemoteHost, load_on_remote, ssh_env
from test_ssh_transport import releasegate

from releasegate.config import load_config
from releasegate.hosts.transport import close_ssh_hosts
from releasegate.router.config import COLOR_HEADER
from releasegate.router.manager import router_address


@pytest.fixture
def colors(remote_host: RemoteHost, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Blue and green: HTTP servers on the remote host's loopback (its namespace)."""
    ports = free_ports(2)
    servers = []
    for color, port in zip(("blue", "green"), ports, strict=True):
        root = tmp_path / color
        root.mkdir()
        (root / "healthz").write_text("ok\n")
        command = [
            "ip", "netns", "exec", remote_host.namespace,
            sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
        ]  # fmt: skip
        servers.append(
            subprocess.Popen(
                command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    try:
        yield ports[0], ports[1]
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)


def color_seen_on_remote(host: RemoteHost, port: int) -> str:
    """The color that answers a request made inside the remote host to the router."""
    answer = subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{host.namespace}",
         "curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "5",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    for line in answer.stdout.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == COLOR_HEADER.lower():
            return value.strip()
    raise AssertionError(f"no {COLOR_HEADER} in {answer.stdout!r}")


@pytest.mark.slow
def test_router_runs_and_switches_on_the_remote_host(
    remote_host: RemoteHost, colors: tuple[int, int], tmp_path: Path
) -> None:
    image = local_haproxy_image()
    load_on_remote(remote_host, image)
    service = f"rgrouter-{uuid.uuid4().hex[:8]}"
    (bind_port,) = free_ports(1)
    runtime_dir = tmp_path / "runner-router"
    config = tmp_path / "releasegate.toml"
    config.write_text(
        f"""\
[service]
name = "{service}"

[deploy]
network = "host"
blue_port = {colors[0]}
green_port = {colors[1]}

[router]
mode = "container"
image = "{image}"
bind = "127.0.0.1:{bind_port}"
runtime_dir = "{runtime_dir}"
check_interval = "200ms"
"""
    )
    env = ssh_env(remote_host)

    def cli(*args: str) -> dict[str, Any]:
        done = releasegate(config, env, "router", *args, "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    try:
        up = cli("up")
        assert up["started"] and up["mode"] == "container"
        container = remote_host.docker("inspect", f"releasegate-router-{service}")
        assert container.returncode == 0, container.stderr
        mounts = json.loads(container.stdout)[0]["Mounts"]
        assert [(m["Type"], m["Name"]) for m in mounts] == [
            ("volume", f"releasegate-router-{service}")
        ]
        assert not cli("up")["started"]
        status = cli("status")
        assert status["live"] == "blue"
        # HAProxy's own health checks, seen through the forwarded admin socket.
        deadline = time.monotonic() + 15
        while not all(status["colors"][color]["healthy"] for color in ("blue", "green")):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
            status = cli("status")
        assert color_seen_on_remote(remote_host, bind_port) == "blue"
        # What the release's watch asks: the bind address on the remote loopback, through
        # a port the tunnel forwards (nothing listens on this machine's bind_port).
        settings = load_config(config, env)
        address = router_address(settings)
        assert address != f"http://127.0.0.1:{bind_port}"
        assert httpx.get(address, timeout=10).headers[COLOR_HEADER] == "blue"
        close_ssh_hosts()

        cli("promote", "green")
        assert cli("status")["live"] == "green"
        assert color_seen_on_remote(remote_host, bind_port) == "green"

        cli("rollback")
        assert cli("status")["live"] == "blue"
        assert color_seen_on_remote(remote_host, bind_port) == "blue"

        # A stop saves the live color in the volume; the next start restores it.
        cli("promote", "green")
        down = cli("down")
        assert down["stopped"] and down["saved_state"]
        again = cli("up")
        assert again["started"] and again["restored_state"]
        assert color_seen_on_remote(remote_host, bind_port) == "green"
        assert cli("down")["stopped"]
    finally:
        releasegate(config, env, "router", "down", "--forget")
        remote_host.docker("rm", "--force", f"releasegate-router-{service}")
        remote_host.docker("volume", "rm", "--force", f"releasegate-router-{service}")
    gone = remote_host.docker("inspect", f"releasegate-router-{service}")
    assert gone.returncode != 0
    # Nothing of the router was written on the runner.
    assert not runtime_dir.exists()
