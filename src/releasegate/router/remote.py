"""The router on a remote Docker host (``DOCKER_HOST=ssh://``): nothing on this machine.

HAProxy runs in a container on the remote host (host network). Its config, state file and
admin socket live in a Docker volume there, mounted at
:data:`~releasegate.router.config.REMOTE_RUNTIME_DIR` in the container. Files go in and
out through the Docker API (``put_archive``/``get_archive`` on a short-lived helper
container of the router image that mounts the volume), and the runtime API is the
volume's admin socket forwarded over the same ssh connection, so the one runtime client
works unchanged.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from releasegate.errors import ConfigError, InfraError
from releasegate.hosts.transport import ssh_host
from releasegate.router.process import ContainerEngine, docker_reason, haproxy_alerts

if TYPE_CHECKING:
    from docker.models.containers import Container
    from docker.models.volumes import Volume

# How long ``haproxy -c`` may take in its helper container.
VALIDATE_TIMEOUT = 30


class RemoteContainerRunner(ContainerEngine):
    """HAProxy in a container on the remote host, its files in a volume there."""

    # The volume's files are written through the Docker API as root; HAProxy, alone in
    # its container with only that volume, runs as root to read them and bind its socket.
    _user = "0:0"

    @property
    def volume_name(self) -> str:
        return f"releasegate-router-{self.settings.service}"

    @property
    def _volumes(self) -> dict[str, dict[str, str]]:
        return {self.volume_name: {"bind": str(self.paths.runtime_dir), "mode": "rw"}}

    def _volume(self, *, create: bool) -> Volume | None:
        import docker

        try:
            return self.docker.volumes.get(self.volume_name)
        except docker.errors.NotFound:
            if not create:
                return None
            return self.docker.volumes.create(self.volume_name, labels=self._labels)
        except docker.errors.DockerException as exc:
            raise InfraError(f"Docker: {docker_reason(exc)}") from None

    @contextmanager
    def _helper(self, command: list[str]) -> Iterator[Container]:
        """A container of the router image that mounts the volume (created, not started)."""
        import docker

        self._volume(create=True)
        try:
            container = self.docker.containers.create(
                self.image,
                command,
                network_mode="none",
                volumes=self._volumes,
                user=self._user,
                labels=self._labels,
            )
        except docker.errors.DockerException as exc:
            raise InfraError(
                f"cannot run router image {self.image}: {docker_reason(exc)}"
            ) from None
        try:
            yield container
        finally:
            container.remove(force=True)

    def install_config(self, text: str) -> None:
        candidate = self.paths.runtime_dir / "haproxy.cfg.new"
        with self._helper(["haproxy", "-c", "-f", str(candidate)]) as checker:
            _put(checker, candidate, text)
            checker.start()
            status = checker.wait(timeout=VALIDATE_TIMEOUT).get("StatusCode", 1)
            output = checker.logs().decode(errors="replace")
            if status != 0:
                raise ConfigError(
                    "haproxy rejected the router config: "
                    + haproxy_alerts(output, self.config, candidate)
                )
            _put(checker, self.paths.config, text)

    def read_file(self, path: Path) -> str | None:
        import docker

        if self._volume(create=False) is None:
            return None
        with self._helper(["haproxy", "-v"]) as helper:
            try:
                chunks, _ = helper.get_archive(str(path))
            except docker.errors.NotFound:
                return None
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                member = archive.extractfile(path.name)
                return None if member is None else member.read().decode()

    def write_file(self, path: Path, text: str) -> None:
        with self._helper(["haproxy", "-v"]) as helper:
            _put(helper, path, text)

    def discard_file(self, path: Path) -> None:
        # The image need not hold an `rm`: an empty file is what HAProxy ignores
        # (an empty server-state file loads nothing; filter_state_file rejects it).
        if self.read_file(path):
            self.write_file(path, "")

    def admin_socket(self) -> Path:
        volume = self._volume(create=False)
        if volume is None:
            raise InfraError(
                f"the router is not running on {ssh_host(self.settings).describe()}"
                f" (no volume {self.volume_name})"
            )
        relative = self.paths.socket.relative_to(self.paths.runtime_dir)
        remote_path = f"{volume.attrs['Mountpoint']}/{relative}"
        return ssh_host(self.settings).forward_socket(remote_path)

    def stop(self, timeout: float) -> bool:
        return self.stop_container(timeout)


def _put(container: Container, path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in ``container`` (mode 0600) through the Docker API."""
    import docker

    data = text.encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(path.name)
        info.size = len(data)
        info.mode = 0o600
        tar.addfile(info, io.BytesIO(data))
    try:
        container.put_archive(str(path.parent), archive.getvalue())
    except docker.errors.DockerException as exc:
        raise InfraError(f"cannot write the router's {path.name}: {docker_reason(exc)}") from None
