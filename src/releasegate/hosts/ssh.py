"""An OpenSSH tunnel to the Docker host (or a backup host): one master connection, forwards
and sftp sessions through it.

The master is a plain ``ssh -M -N`` with its control socket in a private temporary
folder (mode 0700); forwards are added to it with ``ssh -O forward``, and ``sftp`` runs
over it (:meth:`SshTunnel.sftp_args`) without a second login. The host key must
already be pinned (``StrictHostKeyChecking=yes``: never trust on first use) and nothing
asks for a password (``BatchMode=yes``). Keys are files: ssh's argv holds paths only.

A connection that fails is an :class:`InfraError` (exit 3) whose one line says why:
``host key mismatch``, ``wrong credentials`` or ``unreachable``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from releasegate.errors import ConfigError, InfraError
from releasegate.secrets import redact

HOST_KEY_MISMATCH = "host key mismatch"
WRONG_CREDENTIALS = "wrong credentials"
UNREACHABLE = "unreachable"

# ssh's stderr -> what went wrong; the first pattern found wins (a changed host key
# also prints "Host key verification failed", which says less).
_FAILURES = (
    ("IDENTIFICATION HAS CHANGED", HOST_KEY_MISMATCH, "not the key pinned for it"),
    ("host key is known for", HOST_KEY_MISMATCH, "no key is pinned for it"),
    ("Host key verification failed", HOST_KEY_MISMATCH, "its key is not pinned"),
    ("Permission denied", WRONG_CREDENTIALS, "the key was refused"),
    ("Too many authentication failures", WRONG_CREDENTIALS, "the key was refused"),
    ("Connection refused", UNREACHABLE, "connection refused"),
    ("timed out", UNREACHABLE, "connection timed out"),
    ("No route to host", UNREACHABLE, "no route to host"),
    ("Network is unreachable", UNREACHABLE, "network is unreachable"),
    ("Could not resolve hostname", UNREACHABLE, "the name does not resolve"),
)  # fmt: skip

# How long a master that answered ``ssh -O check`` counts as connected.
_CHECK_EVERY_S = 1.0

# A forwarded connection that the remote end accepts stays open at least this long;
# one that nothing accepts there is closed by ssh at once.
_PROBE_S = 1.0


def known_ssh_failure(stderr: str) -> str | None:
    """``KIND (detail)`` when ssh's stderr shows a known connection failure, else None."""
    for pattern, kind, detail in _FAILURES:
        if pattern in stderr:
            return f"{kind} ({detail})"
    return None


def last_line(stderr: str) -> str | None:
    """The last non-empty line of a program's stderr, registered secrets redacted."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return redact(lines[-1]) if lines else None


def classify_ssh_error(stderr: str) -> str:
    """One line from ssh's stderr: ``KIND (detail)`` for known failures, else its last line."""
    if (known := known_ssh_failure(stderr)) is not None:
        return known
    line = last_line(stderr)
    return f"ssh failed: {line}" if line else "ssh failed without a message"


@dataclass(frozen=True)
class SshTarget:
    """``ssh://[USER@]HOST[:PORT]`` as ``DOCKER_HOST`` names it."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (
            parts.scheme != "ssh"
            or not parts.hostname
            or port == -1
            or parts.password is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            # A password in the URL is refused without repeating the URL.
            raise ConfigError(
                "DOCKER_HOST: expected ssh://USER@HOST[:PORT] (no password: use a key file)"
            )
        return cls(host=parts.hostname, user=parts.username or None, port=port)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"


def _ssh_path(path: Path) -> str:
    """``path`` as ssh reads a file option: quoted (spaces), ``%`` escaped (its tokens)."""
    text = str(path)
    if '"' in text:
        raise ConfigError(f"ssh cannot read a file whose path holds a double quote: {text}")
    return '"' + text.replace("%", "%%") + '"'


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SshTunnel:
    """One ssh master connection to ``target`` and the forwards it carries."""

    def __init__(
        self,
        target: SshTarget,
        *,
        known_hosts: Path | None = None,
        identity_file: Path | None = None,
        connect_timeout: float = 10.0,
        ssh_binary: str = "ssh",
    ) -> None:
        for label, path in (("known_hosts", known_hosts), ("identity file", identity_file)):
            if path is not None and not path.is_file():
                raise ConfigError(f"ssh {label} not found: {path}")
        self.target = target
        self.known_hosts = known_hosts
        self.identity_file = identity_file
        self.connect_timeout = connect_timeout
        self.ssh_binary = ssh_binary
        self._dir: Path | None = None
        self._master: subprocess.Popen[bytes] | None = None
        self._socket_forwards: dict[str, Path] = {}
        self._port_forwards: dict[tuple[str, int], int] = {}
        # How often the connection was made again after it dropped.
        self._reconnects = 0
        self._checked_at = 0.0

    def __enter__(self) -> SshTunnel:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def drops(self) -> int:
        """How often the connection dropped: made again since, or found dead by now."""
        lost = self._master is not None and self._master.poll() is not None
        return self._reconnects + int(lost)

    @property
    def is_open(self) -> bool:
        return self._master is not None and self._master.poll() is None

    def _control(self) -> Path:
        if self._dir is None:
            raise InfraError(f"ssh {self.target}: the tunnel is not open")
        return self._dir / "control"

    def _args(self) -> list[str]:
        """ssh and the options every call shares (the destination comes last)."""
        args = [self.ssh_binary, "-S", str(self._control()), *self._options()]
        if self.target.port:
            args += ["-p", str(self.target.port)]
        if self.target.user:
            args += ["-l", self.target.user]
        return args

    def sftp_args(self, sftp_binary: str = "sftp") -> list[str]:
        """sftp through the open master (no second login), with the same pinned options
        should it ever connect by itself; the destination (``target.host``) comes last."""
        args = [
            sftp_binary,
            "-o", f"ControlPath={_ssh_path(self._control())}",
            "-o", "ControlMaster=no",
            *self._options(),
        ]  # fmt: skip
        if self.target.port:
            args += ["-o", f"Port={self.target.port}"]
        if self.target.user:
            args += ["-o", f"User={self.target.user}"]
        return args

    def _options(self) -> list[str]:
        """The ``-o`` options of every ssh client: pinned host key, key files, no prompt."""
        args = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "UpdateHostKeys=no",
            "-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
            "-o", "ServerAliveInterval=15",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "StreamLocalBindUnlink=yes",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={_ssh_path(self.known_hosts)}"]
            args += ["-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity_file is not None:
            args += ["-o", f"IdentityFile={_ssh_path(self.identity_file)}"]
            args += ["-o", "IdentitiesOnly=yes"]
        return args

    def _failure(self, reason: str) -> InfraError:
        return InfraError(f"ssh {self.target}: {reason}")

    def open(self) -> None:
        """Connect and authenticate; InfraError (the tunnel closed) when that fails.

        A master that has died (the connection dropped) is replaced, and every forward
        it carried is set up again at the same local port or socket: clients and URLs
        handed out before the drop work again once the tunnel is open.
        """
        if self.is_open:
            # A master whose connection broke exits; asking it (~20 ms) only catches one
            # that is about to, so once a second is enough.
            if time.monotonic() - self._checked_at < _CHECK_EVERY_S:
                return
            if self._run_control("check").returncode == 0:
                self._checked_at = time.monotonic()
                return
            self._end_master()  # alive but no longer connected: dying
        reconnecting = self._master is not None
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="rg-ssh-"))
        self._control().unlink(missing_ok=True)
        log = self._dir / "master.log"
        with log.open("wb") as stderr:
            # A session of its own: Ctrl-C must not cut the tunnel a rollback still needs.
            self._master = subprocess.Popen(
                [*self._args(), "-M", "-N", self.target.host],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        # ssh makes the control socket once it has logged in.
        deadline = time.monotonic() + 2 * self.connect_timeout + 5
        while not (self._control().exists() and self._run_control("check").returncode == 0):
            if self._master.poll() is not None:
                reason = classify_ssh_error(log.read_text(errors="replace"))
                self.close()
                raise self._failure(reason)
            if time.monotonic() > deadline:
                self.close()
                raise self._failure(f"{UNREACHABLE} (no login within {self.connect_timeout:g}s)")
            time.sleep(0.05)
        self._disable_nagle_on_host()
        self._checked_at = time.monotonic()
        if reconnecting:
            self._reconnects += 1
            try:
                for remote_path, local in self._socket_forwards.items():
                    self._forward(f"{local}:{remote_path}", remote_path)
                for (remote_host, remote_port), local_port in self._port_forwards.items():
                    spec = f"127.0.0.1:{local_port}:{remote_host}:{remote_port}"
                    self._forward(spec, f"{(remote_host, remote_port)}")
            except InfraError:
                self.close()
                raise

    def _disable_nagle_on_host(self) -> None:
        """Have sshd set TCP_NODELAY on this connection: one short session does it.

        sshd sets it when the first session starts, never for a connection that only
        forwards; without it, the end of every forwarded exchange (a runtime API call,
        a Docker API request) waits for the runner's delayed ACK: 40 ms each. The
        session's own outcome does not matter (the option stays set either way), so a
        host that refuses commands only stays slower.
        """
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*self._args(), "-T", self.target.host, "true"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.connect_timeout + 10,
            )

    def _run_control(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._args(), "-O", command, *extra, self.target.host],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.connect_timeout + 10,
        )

    def _forward(self, spec: str, what: str) -> None:
        if not self.is_open:
            raise self._failure("the tunnel is not open")
        done = self._run_control("forward", "-L", spec)
        if done.returncode != 0:
            raise self._failure(f"cannot forward {what}: {classify_ssh_error(done.stderr)}")

    def forward_socket(self, remote_path: str) -> Path:
        """A local unix socket that reaches ``remote_path`` on the host."""
        if remote_path not in self._socket_forwards:
            local = self._control().with_name(f"fwd-{len(self._socket_forwards)}.sock")
            self._forward(f"{local}:{remote_path}", remote_path)
            self._socket_forwards[remote_path] = local
        return self._socket_forwards[remote_path]

    def forward_port(self, remote_host: str, remote_port: int) -> int:
        """A port on this machine's loopback that reaches ``remote_host:remote_port``
        as the host sees it."""
        key = (remote_host, remote_port)
        if key not in self._port_forwards:
            local_port = free_local_port()
            self._forward(f"127.0.0.1:{local_port}:{remote_host}:{remote_port}", f"{key}")
            self._port_forwards[key] = local_port
        return self._port_forwards[key]

    def accepts(self, remote_host: str, remote_port: int) -> bool:
        """Whether something on the host accepts connections at ``remote_host:remote_port``."""
        local_port = self.forward_port(remote_host, remote_port)
        with socket.create_connection(("127.0.0.1", local_port), timeout=_PROBE_S) as probe:
            try:
                return probe.recv(1) != b""
            except TimeoutError:
                return True
            except OSError:
                return False

    def _end_master(self) -> None:
        master = self._master
        if master is not None and master.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError, InfraError):
                self._run_control("exit")
            try:
                master.wait(timeout=5)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()

    def close(self) -> None:
        """End the master (and every forward); idempotent."""
        self._end_master()
        self._master = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._socket_forwards.clear()
        self._port_forwards.clear()
