"""How the HAProxy process runs: a daemon on the host (with a pidfile) or a container.

Every runner installs a config validated with ``haproxy -c``, starts HAProxy, tells
whether it runs and soft-stops it (``SIGUSR1``: stop listening, let open connections
finish). It also owns the router's files and says where its admin socket is reached:
in ``router.runtime_dir`` on this machine, or, with ``DOCKER_HOST=ssh://``, in a Docker
volume on the remote host (:mod:`releasegate.router.remote`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from releasegate.config import Settings
from releasegate.errors import ConfigError, InfraError
from releasegate.hosts.transport import is_remote, transport
from releasegate.router.config import RouterConfig
from releasegate.router.runtime import RuntimeClient

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container


class Runner(Protocol):
    """What runs HAProxy: a daemon on the host or a container."""

    mode: str

    def running(self) -> str | None:
        """A description such as 'pid 42' or 'container 3f2a' when HAProxy runs, else None."""

    def install_config(self, text: str) -> None:
        """Validate ``text`` with ``haproxy -c`` (:class:`ConfigError` when rejected), then
        make it the router's haproxy.cfg."""

    def read_file(self, path: Path) -> str | None:
        """The text of one of the router's files (``config.paths``); None when absent."""

    def write_file(self, path: Path, text: str) -> None: ...

    def discard_file(self, path: Path) -> None: ...

    def admin_socket(self) -> Path:
        """The unix socket on this machine that reaches HAProxy's admin socket."""

    def start(self) -> str: ...

    def stop(self, timeout: float) -> bool:
        """Soft-stop; True when it had to be killed."""

    def failure(self) -> str:
        """Why a start failed, from what HAProxy printed."""


def haproxy_alerts(output: str, config: RouterConfig, candidate: Path | None = None) -> str:
    """HAProxy's alert lines, shortened to one line."""
    alerts = []
    for line in output.splitlines():
        if "[ALERT]" not in line:
            continue
        text = line.split("] ", 1)[-1]
        # "   (1234) : config : parsing [...]" -> "parsing [...]"
        parts = [p.strip() for p in text.split(" : ")]
        text = " : ".join(p for p in parts[1:] if p != "config") if len(parts) > 1 else text
        if text.startswith(("Error(s) found in configuration", "Fatal errors found")):
            continue
        if candidate is not None:
            text = text.replace(str(candidate), config.paths.config.name)
            text = text.replace(candidate.name, config.paths.config.name)
        alerts.append(" ".join(text.split()))
    if not alerts:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        return lines[-1] if lines else "no message"
    return "; ".join(alerts[:3])


def find_haproxy(binary: str) -> str:
    """The haproxy executable: a path, or a name on PATH or in the sbin folders."""
    if "/" in binary:
        if os.access(binary, os.X_OK):
            return binary
    else:
        found = shutil.which(binary) or shutil.which(binary, path="/usr/local/sbin:/usr/sbin:/sbin")
        if found:
            return found
    raise InfraError(
        f"haproxy executable {binary!r} not found: install HAProxy (apt-get install haproxy)"
        " or set router.binary"
    )


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name in parentheses; a zombie has exited.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class _LocalFiles(ABC):
    """The router's files in ``router.runtime_dir`` on this machine."""

    config: RouterConfig

    def prepare(self) -> None:
        paths = self.config.paths
        paths.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    @abstractmethod
    def validate(self, path: Path) -> None:
        """Run ``haproxy -c`` on ``path``; :class:`ConfigError` when it is rejected."""

    def install_config(self, text: str) -> None:
        self.prepare()
        paths = self.config.paths
        candidate = paths.runtime_dir / "haproxy.cfg.new"
        candidate.write_text(text)
        try:
            self.validate(candidate)
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        os.replace(candidate, paths.config)
        # A socket left by an earlier HAProxy must not pass for the new one's.
        paths.socket.unlink(missing_ok=True)

    def read_file(self, path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    def write_file(self, path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def discard_file(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def admin_socket(self) -> Path:
        return self.config.paths.socket


class _HostRunner(_LocalFiles):
    mode = "host"

    def __init__(self, settings: Settings, config: RouterConfig) -> None:
        self.settings = settings
        self.config = config
        self.paths = config.paths

    def _pid(self) -> int | None:
        try:
            pid = int(self.paths.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # Never signal a process that merely reuses the pid.
        if str(self.paths.config).encode() not in cmdline:
            return None
        return pid

    def running(self) -> str | None:
        pid = self._pid()
        return None if pid is None else f"pid {pid}"

    def _haproxy(self) -> str:
        return find_haproxy(self.settings.raw.router.binary)

    def validate(self, path: Path) -> None:
        result = subprocess.run(
            [self._haproxy(), "-c", "-f", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise ConfigError(
                "haproxy rejected the router config: "
                + haproxy_alerts(result.stdout + result.stderr, self.config, path)
            )

    def start(self) -> str:
        with self.paths.log.open("w") as log:
            result = subprocess.run(
                [
                    self._haproxy(),
                    "-D",
                    "-p",
                    str(self.paths.pidfile),
                    "-f",
                    str(self.paths.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=30,
            )
        if result.returncode != 0:
            raise InfraError(f"haproxy did not start: {self.failure()}")
        return self.running() or "pid ?"

    def failure(self) -> str:
        try:
            return haproxy_alerts(self.paths.log.read_text(errors="replace"), self.config)
        except OSError:
            return "no output"

    def stop(self, timeout: float) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        forced = False
        # SIGUSR1: soft stop. Stop listening, let open connections finish.
        for sig, grace in (
            (signal.SIGUSR1, timeout + 1.0),
            (signal.SIGTERM, 2.0),
            (signal.SIGKILL, 2.0),
        ):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if wait_until(lambda: not _pid_alive(pid), grace):
                break
            forced = True
        else:
            raise InfraError(f"haproxy (pid {pid}) did not stop")
        for path in (self.paths.pidfile, self.paths.socket):
            path.unlink(missing_ok=True)
        return forced


def wait_until(predicate: Any, timeout: float, poll: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


class ContainerEngine(ABC):
    """HAProxy in a container on the Docker host, host network; where its files are
    mounted from is up to the subclass (``_volumes``, ``_user``)."""

    mode = "container"
    _user: str

    @property
    @abstractmethod
    def _volumes(self) -> dict[str, dict[str, str]]:
        """What the container mounts, as the Docker SDK takes it."""

    def __init__(self, settings: Settings, config: RouterConfig) -> None:
        self.settings = settings
        self.config = config
        self.paths = config.paths
        self.image = settings.raw.router.image
        self.name = f"releasegate-router-{settings.service}"
        self._docker: DockerClient | None = None

    @property
    def docker(self) -> DockerClient:
        if self._docker is None:
            import docker

            try:
                self._docker = transport(self.settings).docker_client(timeout=30)
                self._docker.ping()
            except docker.errors.DockerException as exc:
                raise InfraError(f"Docker is unreachable: {docker_reason(exc)}") from None
        return self._docker

    def _container(self) -> Container | None:
        import docker

        try:
            return self.docker.containers.get(self.name)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise InfraError(f"Docker: {docker_reason(exc)}") from None

    def running(self) -> str | None:
        container = self._container()
        if container is None or container.status != "running":
            return None
        return f"container {container.short_id}"

    @property
    def _labels(self) -> dict[str, str]:
        return {"releasegate.service": self.settings.service, "releasegate.role": "router"}

    def start(self) -> str:
        import docker

        old = self._container()
        try:
            if old is not None:
                old.remove(force=True)
            container = self.docker.containers.run(
                self.image,
                ["haproxy", "-f", str(self.paths.config)],
                name=self.name,
                detach=True,
                restart_policy={"Name": "always"},
                network_mode="host",
                volumes=self._volumes,
                user=self._user,
                labels=self._labels,
            )
        except docker.errors.DockerException as exc:
            raise InfraError(
                f"cannot start router image {self.image}: {docker_reason(exc)}"
            ) from None
        return f"container {container.short_id}"

    def failure(self) -> str:
        container = self._container()
        if container is None:
            return "the container is gone"
        logs = container.logs(tail=20).decode(errors="replace")
        return haproxy_alerts(logs, self.config)

    def stop_container(self, timeout: float) -> bool:
        """Soft-stop and remove the container; True when it had to be killed."""
        import docker

        container = self._container()
        if container is None:
            return False
        forced = False
        try:
            if container.status == "running":
                container.kill(signal="SIGUSR1")
                try:
                    container.wait(timeout=timeout + 1.0)
                except Exception:  # requests' ReadTimeout: the soft stop did not finish
                    container.kill()
                    forced = True
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise InfraError(f"cannot stop the router container: {docker_reason(exc)}") from None
        return forced


class _ContainerRunner(ContainerEngine, _LocalFiles):
    """HAProxy in a container: host network, runtime dir bind-mounted at the same path."""

    @property
    def _volumes(self) -> dict[str, dict[str, str]]:
        folders = {str(self.paths.runtime_dir), str(self.paths.socket.parent)}
        return {folder: {"bind": folder, "mode": "rw"} for folder in folders}

    # The socket and state file belong to whoever runs releasegate.
    _user = f"{os.getuid()}:{os.getgid()}"

    def validate(self, path: Path) -> None:
        import docker

        try:
            self.docker.containers.run(
                self.image,
                ["haproxy", "-c", "-f", str(path)],
                remove=True,
                stdout=True,
                stderr=True,
                network_mode="host",
                volumes=self._volumes,
                user=self._user,
                labels=self._labels,
            )
        except docker.errors.ContainerError as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise ConfigError(
                "haproxy rejected the router config: " + haproxy_alerts(stderr, self.config, path)
            ) from None
        except docker.errors.DockerException as exc:
            raise InfraError(
                f"cannot run router image {self.image}: {docker_reason(exc)}"
            ) from None

    def stop(self, timeout: float) -> bool:
        forced = self.stop_container(timeout)
        self.paths.socket.unlink(missing_ok=True)
        return forced


def docker_reason(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return " ".join(str(text).split())[:300]


def runner_for(settings: Settings, config: RouterConfig) -> Runner:
    """The runner of ``router.mode``: a container (on the remote host with
    ``DOCKER_HOST=ssh://``), else a daemon on this machine."""
    container = settings.raw.router.mode == "container"
    if is_remote(settings):
        if not container:
            raise ConfigError(
                'router.mode = "host" runs HAProxy on this machine, but DOCKER_HOST names'
                ' a remote host: set router.mode = "container"'
            )
        from releasegate.router.remote import RemoteContainerRunner

        return RemoteContainerRunner(settings, config)
    if container:
        return _ContainerRunner(settings, config)
    return _HostRunner(settings, config)


def runtime_client(settings: Settings, config: RouterConfig, timeout: float = 5.0) -> RuntimeClient:
    """A client of the runtime API of the router of ``settings``, wherever it runs."""
    return RuntimeClient(runner_for(settings, config).admin_socket(), timeout=timeout)
