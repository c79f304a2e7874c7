"""The Docker host that releasegate deploys to: this machine, or one reached over ssh.

Whatever touches the host goes through the :class:`HostTransport` that
:func:`transport` picks from ``DOCKER_HOST``:

- :class:`LocalHost` (``DOCKER_HOST`` unset, ``unix://`` or ``tcp://``): the engine the
  Docker SDK finds in the environment; a color answers at its port on this machine.
- :class:`SshHost` (``DOCKER_HOST=ssh://USER@HOST[:PORT]``): one OpenSSH tunnel
  (:mod:`releasegate.hosts.ssh`). The Docker client talks to the host's engine socket
  (``deploy.remote_docker_socket``) forwarded to a local unix socket, and readiness,
  smoke and gate traffic reaches a color *through the tunnel*: a port on this machine's
  loopback forwarded to the color's port as the host itself sees it, so no color port
  has to be open on the host's network. A store configured ``via_ssh`` is reached the
  same way: its URL names the host and port as the Docker host sees them, and
  releasegate connects to a local port forwarded there.

One tunnel per host serves the whole process and closes when the process exits.
"""

from __future__ import annotations

import atexit
import socket
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit

import docker

from releasegate.config import Settings
from releasegate.errors import ConfigError
from releasegate.hosts.ssh import SshTarget, SshTunnel

LOOPBACK = "127.0.0.1"
# Addresses a server binds to mean "every interface": connect to the loopback instead.
_ANY_ADDRESS = ("0.0.0.0", "", "::")


class HostTransport(Protocol):
    """How releasegate reaches the Docker host and the colors running on it."""

    def describe(self) -> str:
        """The host in words, for messages."""
        ...

    def docker_client(self, timeout: float) -> docker.DockerClient:
        """A client of the host's Docker engine (not yet pinged)."""
        ...

    def color_url(self, port: int, host: str = LOOPBACK) -> str:
        """The base URL at which releasegate reaches what listens on ``host:port`` of the
        Docker host (``host`` as the Docker host sees it)."""
        ...

    def port_in_use(self, host: str, port: int) -> bool:
        """Whether something on the Docker host already listens on ``host:port``."""
        ...

    def connection_drops(self) -> int:
        """How often the connection to the host dropped and was made again."""
        ...

    def store_url(self, url: str, key: str) -> str:
        """A store's ``url``, whose host and port are as the Docker host sees them, made
        reachable from this machine (``key``, the setting that asked, names it in errors)."""
        ...


class LocalHost:
    """The Docker engine from the environment; colors on this machine."""

    def describe(self) -> str:
        return "this machine"

    def docker_client(self, timeout: float) -> docker.DockerClient:
        return docker.from_env(timeout=max(1, round(timeout)))

    def color_url(self, port: int, host: str = LOOPBACK) -> str:
        return f"http://{LOOPBACK if host in _ANY_ADDRESS else host}:{port}"

    def port_in_use(self, host: str, port: int) -> bool:
        """Binding ``host:port`` as a server would fails."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # Connections of an earlier server in TIME_WAIT must not count as "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return True
        return False

    def connection_drops(self) -> int:
        return 0  # no connection of releasegate's own to lose

    def store_url(self, url: str, key: str) -> str:
        raise ConfigError(
            f"{key} = true needs DOCKER_HOST=ssh://USER@HOST: the store is reached through"
            " the ssh connection to the Docker host, and there is none"
        )


class SshHost:
    """A Docker host reached through one OpenSSH tunnel, opened on first use."""

    def __init__(self, tunnel: SshTunnel, remote_docker_socket: str) -> None:
        self.tunnel = tunnel
        self.remote_docker_socket = remote_docker_socket

    def describe(self) -> str:
        return f"{self.tunnel.target} over ssh"

    def docker_client(self, timeout: float) -> docker.DockerClient:
        self.tunnel.open()
        local_socket = self.tunnel.forward_socket(self.remote_docker_socket)
        timeout_s = max(1, round(timeout))
        return docker.DockerClient(base_url=f"unix://{local_socket}", timeout=timeout_s)

    def color_url(self, port: int, host: str = LOOPBACK) -> str:
        self.tunnel.open()
        local_port = self.tunnel.forward_port(LOOPBACK if host in _ANY_ADDRESS else host, port)
        return f"http://{LOOPBACK}:{local_port}"

    def port_in_use(self, host: str, port: int) -> bool:
        """The host accepts a connection to ``host:port`` through the tunnel (a bind test
        would need a program on the host)."""
        self.tunnel.open()
        return self.tunnel.accepts(LOOPBACK if host in _ANY_ADDRESS else host, port)

    def connection_drops(self) -> int:
        return self.tunnel.drops

    def store_url(self, url: str, key: str) -> str:
        """``url`` pointed at a local port forwarded to its host and port, as the Docker
        host sees them; credentials, database and options unchanged."""
        host, port = _host_and_port(url, key)
        self.tunnel.open()
        return _with_address(url, LOOPBACK, self.tunnel.forward_port(host, port))

    def forward_socket(self, remote_path: str) -> Path:
        """A local unix socket that reaches the unix socket ``remote_path`` on the host."""
        self.tunnel.open()
        return self.tunnel.forward_socket(remote_path)

    def close(self) -> None:
        self.tunnel.close()


# A store URL without a port means the scheme's usual one.
_DEFAULT_PORTS = {
    "postgresql": 5432,
    "postgres": 5432,
    "redis": 6379,
    "rediss": 6379,
    "http": 80,
    "https": 443,
}


def _host_and_port(url: str, key: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    # libpq lets ?host= or ?port= override the address: the forward would be bypassed.
    overridden = {"host", "hostaddr", "port"} & parse_qs(parts.query).keys()
    if not parts.hostname or "," in parts.netloc or port is None or overridden:
        # Never the URL itself: it may hold a password.
        raise ConfigError(
            f"{key}: the store's URL must name one host and port as the Docker host sees"
            f" them (scheme {parts.scheme or 'missing'})"
        )
    return parts.hostname, port


def _with_address(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


_ssh_hosts: dict[tuple[object, ...], SshHost] = {}
_tunnels: dict[tuple[object, ...], SshTunnel] = {}


def _file_from_env(settings: Settings, variable: str) -> Path | None:
    value = settings.env.get(variable, "")
    return Path(value).expanduser() if value else None


def is_remote(settings: Settings) -> bool:
    """Whether ``DOCKER_HOST`` names a host reached over ssh (files there are not ours)."""
    return settings.env.get("DOCKER_HOST", "").startswith("ssh://")


def ssh_tunnel(settings: Settings, target: SshTarget) -> SshTunnel:
    """The tunnel to ``target`` with the ``[ssh]`` section's pinned known_hosts and key;
    one per host and credentials for the whole process (opened on first use)."""
    ssh = settings.raw.ssh
    known_hosts = _file_from_env(settings, ssh.known_hosts_env)
    identity_file = _file_from_env(settings, ssh.identity_file_env)
    key = (target, known_hosts, identity_file, ssh.connect_timeout)
    if key not in _tunnels:
        _tunnels[key] = SshTunnel(
            target,
            known_hosts=known_hosts,
            identity_file=identity_file,
            connect_timeout=ssh.connect_timeout,
        )
    return _tunnels[key]


def ssh_host(settings: Settings) -> SshHost:
    """The ssh transport of ``DOCKER_HOST=ssh://``; one per host for the whole process."""
    tunnel = ssh_tunnel(settings, SshTarget.parse(settings.env.get("DOCKER_HOST", "")))
    remote_socket = settings.raw.deploy.remote_docker_socket
    key = (id(tunnel), remote_socket)
    if key not in _ssh_hosts:
        _ssh_hosts[key] = SshHost(tunnel, remote_socket)
    return _ssh_hosts[key]


def transport(settings: Settings) -> HostTransport:
    """The host ``DOCKER_HOST`` names: over ssh for ``ssh://``, else this machine's engine."""
    return ssh_host(settings) if is_remote(settings) else LocalHost()


@atexit.register
def close_ssh_hosts() -> None:
    """Close every tunnel this process opened."""
    for tunnel in _tunnels.values():
        tunnel.close()
    _tunnels.clear()
    _ssh_hosts.clear()
