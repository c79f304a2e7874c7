"""Blue and green containers of one service on one Docker host.

Each color is one container named ``<service>-<color>``, labelled ``releasegate.service``,
``releasegate.color``, ``releasegate.release``, ``releasegate.image`` and
``releasegate.port``, and reachable on the color's host port (``deploy.blue_port`` /
``deploy.green_port``), where the router sends its traffic.

:func:`deploy` puts an image on a color:

1. It refuses a color that the router reports as serving traffic (weight > 0), unless
   forced: the color being deployed is the idle one.
2. It **replaces** the color's current container first. The idle color serves no traffic,
   so nothing is lost, and the port is free for the new container; the other color is
   never touched.
3. It checks that the color's port is free (another process there is a
   :class:`StateError`, exit 1), starts the container with the configured environment,
   network, memory and CPU limits, and waits until ``deploy.readiness_path`` answers 200
   (or, with no path, until Docker reports the container healthy) for at most
   ``deploy.ready_timeout``.
4. A container that exits, turns unhealthy or is not ready in time is removed, and
   :class:`DeployFailed` (exit 1) carries its last 30 log lines.

An image that is neither local nor pullable is a :class:`ConfigError` (exit 2): the
reference given is wrong for this host. An unreachable engine is an :class:`InfraError`
(exit 3).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
import httpx
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.models.images import Image
from docker.types import LogConfig
from requests.exceptions import RequestException

from releasegate.config import Settings
from releasegate.deploy.engine import (
    LABEL_COLOR,
    LABEL_IMAGE,
    LABEL_PORT,
    LABEL_RELEASE,
    LABEL_SERVICE,
    connect,
    docker_message,
)
from releasegate.errors import CheckFailed, ConfigError, InfraError, ReleasegateError, StateError
from releasegate.hosts.transport import transport
from releasegate.secrets import redact, register_secret, register_url

COLORS = ("blue", "green")
LOG_TAIL = 30
POLL_S = 0.25
REVISION_LABEL = "org.opencontainers.image.revision"
NO_RELEASE = "none"


class DeployFailed(CheckFailed):
    """The new container never became ready; it was removed. ``logs`` is its log tail."""

    def __init__(self, message: str, color: str, logs: list[str]) -> None:
        super().__init__(message)
        self.color = color
        self.logs = logs


@dataclass(frozen=True)
class ContainerSpec:
    """Everything :func:`deploy` passes to Docker for one color."""

    name: str
    color: str
    image: str
    host_port: int
    listen_port: int
    environment: dict[str, str] = field(repr=False)
    labels: dict[str, str]
    # The Docker host's address where the container answers (readiness checks reach it
    # through the host's transport).
    readiness_host: str
    run_kwargs: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class DeployResult:
    color: str
    container: str
    container_id: str
    image_ref: str
    image_id: str
    git_sha: str | None
    port: int
    release: str
    replaced: str | None
    ready_after_s: float
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__}


@dataclass(frozen=True)
class ColorStatus:
    """One color as ``releasegate ps`` shows it."""

    color: str
    container: str | None
    image: str | None
    image_id: str | None
    image_tags: list[str]
    git_sha: str | None
    release: str | None
    state: str
    health: str | None
    port: int
    weight: int | None
    started_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__}


def check_color(color: str) -> str:
    if color not in COLORS:
        raise ConfigError(f"unknown color {color!r}: use blue or green")
    return color


def container_name(settings: Settings, color: str) -> str:
    return f"{settings.service}-{check_color(color)}"


def color_port(settings: Settings, color: str) -> int:
    section = settings.raw.deploy
    if section.blue_port == section.green_port:
        raise ConfigError("deploy.blue_port and deploy.green_port must differ")
    return section.blue_port if check_color(color) == "blue" else section.green_port


def _environment(settings: Settings, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    """deploy.env, then the passthrough variables that are set, then ``extra_env``."""
    section = settings.raw.deploy
    env = dict(section.env)
    for name in section.env_passthrough:
        value = settings.env.get(name)
        if value is None:
            continue
        # Passed-through values are secrets until proven otherwise: never print them.
        register_secret(value)
        if "://" in value:
            register_url(value)
        env[name] = value
    env.update(extra_env or {})
    return env


def container_spec(
    settings: Settings,
    color: str,
    image: str,
    *,
    release: str | None = None,
    image_ref: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """The container :func:`deploy` runs for ``color``: name, env, labels, limits, ports."""
    section = settings.raw.deploy
    name = container_name(settings, color)
    host_port = color_port(settings, color)
    host_network = section.network == "host"
    if host_network and section.port_env is None:
        raise ConfigError(
            "deploy.network = 'host' needs deploy.port_env: both colors share the host's"
            " ports, so each must be told which port to listen on"
        )
    listen_port = host_port if host_network else section.container_port
    env = _environment(settings, extra_env)
    if section.port_env:
        env[section.port_env] = str(listen_port)
    labels = {
        LABEL_SERVICE: settings.service,
        LABEL_COLOR: color,
        LABEL_RELEASE: release or NO_RELEASE,
        LABEL_IMAGE: image_ref or image,
        LABEL_PORT: str(host_port),
    }
    kwargs: dict[str, Any] = {
        "name": name,
        "detach": True,
        "environment": env,
        "labels": labels,
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
    }
    if section.memory:
        kwargs["mem_limit"] = section.memory
    if section.cpus:
        kwargs["nano_cpus"] = int(section.cpus * 1e9)
    if host_network:
        kwargs["network_mode"] = "host"
    else:
        kwargs["ports"] = {f"{section.container_port}/tcp": (section.host_ip, host_port)}
        if section.network:
            kwargs["network"] = section.network
    readiness_host = (
        "127.0.0.1" if host_network or section.host_ip in ("0.0.0.0", "") else section.host_ip
    )
    return ContainerSpec(
        name=name,
        color=color,
        image=image,
        host_port=host_port,
        listen_port=listen_port,
        environment=env,
        labels=labels,
        readiness_host=readiness_host,
        run_kwargs=kwargs,
    )


def resolve_image(client: docker.DockerClient, ref: str, *, pull: bool = True) -> Image:
    """The local image ``ref``, pulled first when it is not local; ConfigError if neither.

    With ``pull=False`` (a dry run, which changes nothing and downloads nothing) only
    local images count.
    """
    try:
        return client.images.get(ref)
    except ImageNotFound:
        pass
    except DockerException as exc:
        raise InfraError(f"cannot inspect image {ref}: {docker_message(exc)}") from None
    if ref.startswith("sha256:") or not pull:
        raise ConfigError(
            f"image {ref} does not exist on this Docker host"
            + ("" if pull else " (a dry run pulls nothing: pull or build it first)")
        )
    try:
        return client.images.pull(ref)
    except APIError as exc:
        if exc.status_code in (400, 404):
            # The registry answered: no such image (or no such name), which is bad input.
            raise ConfigError(
                f"image {ref} is not on this Docker host and not in its registry:"
                f" {docker_message(exc)}"
            ) from None
        raise InfraError(
            f"cannot pull image {ref}: its registry did not serve it: {docker_message(exc)}"
        ) from None
    except (DockerException, RequestException) as exc:
        raise InfraError(f"cannot pull image {ref}: {docker_message(exc)}") from None


def find_container(client: docker.DockerClient, settings: Settings, color: str) -> Container | None:
    """The container of ``color``: by label, else by name (a leftover without labels)."""
    try:
        found = client.containers.list(
            all=True,
            filters={"label": [f"{LABEL_SERVICE}={settings.service}", f"{LABEL_COLOR}={color}"]},
        )
        if found:
            return found[0]
        return client.containers.get(container_name(settings, color))
    except NotFound:
        return None
    except DockerException as exc:
        raise InfraError(f"cannot list containers: {docker_message(exc)}") from None


def traffic_weights(settings: Settings) -> dict[str, int] | None:
    """Share of new requests per color from the router; None without a running router."""
    try:
        from releasegate.router.state import router_status
    except ImportError:
        return None
    try:
        return dict(router_status(settings).weights)
    except (ReleasegateError, OSError):
        return None


def log_tail(container: Container, lines: int = LOG_TAIL) -> list[str]:
    """The container's last ``lines`` log lines (stdout and stderr), secrets removed."""
    try:
        raw = container.logs(stdout=True, stderr=True, tail=lines)
    except DockerException:
        return []
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    return [redact(line) for line in text.splitlines()][-lines:]


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except NotFound:
        pass
    except DockerException as exc:
        raise InfraError(
            f"cannot remove container {container.name}: {docker_message(exc)}"
        ) from None


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def wait_ready(
    container: Container,
    url: str | None,
    timeout: float,
    *,
    poll: float = POLL_S,
) -> tuple[bool, str]:
    """Poll until ``url`` answers 200 (or Docker says healthy when ``url`` is None).

    Returns (ready, reason); not ready as soon as the container exits or turns unhealthy.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client() as http:
        while True:
            try:
                container.reload()
            except NotFound:
                return False, "the container disappeared"
            except DockerException as exc:
                raise InfraError(
                    f"cannot inspect {container.name}: {docker_message(exc)}"
                ) from None
            state = container.attrs.get("State", {})
            status = state.get("Status")
            health = (state.get("Health") or {}).get("Status")
            if status in ("exited", "dead") or state.get("Restarting"):
                error = f" ({state['Error']})" if state.get("Error") else ""
                return False, f"the container exited with code {state.get('ExitCode')}{error}"
            if health == "unhealthy":
                return False, "Docker reports the container unhealthy"
            if status == "running":
                if url is not None:
                    remaining = max(0.2, min(2.0, deadline - time.monotonic()))
                    try:
                        response = http.get(url, timeout=remaining)
                    except httpx.HTTPError as exc:
                        last = f"{type(exc).__name__}"
                    else:
                        if response.status_code == 200:
                            return True, "ready"
                        last = f"HTTP {response.status_code}: {_short(redact(response.text))}"
                elif health in (None, "healthy"):
                    return True, "running" if health is None else "healthy"
                else:
                    last = f"health {health}"
            if time.monotonic() >= deadline:
                return False, f"not ready within {timeout:g}s (last: {last})"
            time.sleep(poll)


def deploy(
    settings: Settings,
    color: str,
    image: str,
    *,
    release: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    force: bool = False,
    ready_timeout: float | None = None,
    on_progress: Callable[[str], None] | None = None,
    client: docker.DockerClient | None = None,
) -> DeployResult:
    """Run ``image`` as ``color`` and wait until it is ready (see the module docs)."""
    started = time.monotonic()
    check_color(color)
    say = on_progress or (lambda _message: None)
    section = settings.raw.deploy
    client = client or connect(settings)
    resolved = resolve_image(client, image)
    image_id = str(resolved.id)
    git_sha = (resolved.labels or {}).get(REVISION_LABEL)
    spec = container_spec(
        settings, color, image_id, release=release, image_ref=image, extra_env=extra_env
    )

    if not force:
        weights = traffic_weights(settings)
        if weights and weights.get(color, 0) > 0:
            raise StateError(
                f"{color} serves traffic (weight {weights[color]}): deploy to the idle color"
                ", or force it (--force)"
            )
    replaced = None
    old = find_container(client, settings, color)
    if old is not None:
        replaced = str(old.name)
        say(f"removing the old {color} container {old.name}")
        _remove(old)

    host = transport(settings)
    bind_host = "0.0.0.0" if section.network == "host" else section.host_ip
    if host.port_in_use(bind_host, spec.host_port):
        raise StateError(
            f"port {spec.host_port} for {color} is already in use on this host:"
            f" stop what listens there or change deploy.{color}_port"
        )

    say(f"starting {spec.name} from {image} on port {spec.host_port}")
    try:
        container = client.containers.run(image_id, **spec.run_kwargs)
    except APIError as exc:
        leftover = find_container(client, settings, color)
        if leftover is not None:
            _remove(leftover)
        message = docker_message(exc)
        if "already allocated" in message or "address already in use" in message:
            raise StateError(
                f"port {spec.host_port} for {color} is already in use on this host: {message}"
            ) from None
        raise InfraError(f"cannot start {spec.name}: {message}") from None
    except (DockerException, RequestException) as exc:
        raise InfraError(f"cannot start {spec.name}: {docker_message(exc)}") from None

    url = (
        host.color_url(spec.host_port, spec.readiness_host) + section.readiness_path
        if section.readiness_path
        else None
    )
    timeout = section.ready_timeout if ready_timeout is None else ready_timeout
    ready_started = time.monotonic()
    ready, reason = wait_ready(container, url, timeout)
    if not ready:
        logs = log_tail(container)
        _remove(container)
        raise DeployFailed(
            f"{color} ({spec.name}) did not become ready: {reason}; the container was removed",
            color,
            logs,
        )
    try:
        # Survive engine restarts from now on (not before: a crash loop must show as a failure).
        container.update(restart_policy={"Name": "unless-stopped"})
    except DockerException as exc:
        raise InfraError(
            f"cannot set the restart policy of {spec.name}: {docker_message(exc)}"
        ) from None
    return DeployResult(
        color=color,
        container=spec.name,
        container_id=str(container.id),
        image_ref=image,
        image_id=image_id,
        git_sha=git_sha,
        port=spec.host_port,
        release=release or NO_RELEASE,
        replaced=replaced,
        ready_after_s=time.monotonic() - ready_started,
        duration_s=time.monotonic() - started,
    )


def stop(
    settings: Settings,
    color: str,
    *,
    force: bool = False,
    client: docker.DockerClient | None = None,
) -> str | None:
    """Stop and remove the container of ``color``; its name, or None when there was none.

    Refuses a color the router sends traffic to, unless ``force``.
    """
    check_color(color)
    if not force:
        weights = traffic_weights(settings)
        if weights and weights.get(color, 0) > 0:
            raise StateError(f"{color} serves traffic (weight {weights[color]}): not stopping it")
    client = client or connect(settings)
    container = find_container(client, settings, color)
    if container is None:
        return None
    with contextlib.suppress(DockerException):  # removed below in any case
        container.stop(timeout=int(settings.raw.deploy.drain) + 10)
    _remove(container)
    return str(container.name)


def status(
    settings: Settings,
    *,
    client: docker.DockerClient | None = None,
    weights: Mapping[str, int] | None = None,
    with_weights: bool = True,
) -> list[ColorStatus]:
    """Both colors: container, image, state and health, port and router weight."""
    client = client or connect(settings)
    if weights is None and with_weights:
        weights = traffic_weights(settings)
    rows = []
    for color in COLORS:
        port = color_port(settings, color)
        weight = None if weights is None else int(weights.get(color, 0))
        container = find_container(client, settings, color)
        if container is None:
            rows.append(
                ColorStatus(
                    color, None, None, None, [], None, None, "absent", None, port, weight, None
                )
            )
            continue
        attrs = container.attrs
        state = attrs.get("State", {})
        labels = attrs.get("Config", {}).get("Labels") or {}
        image_id = str(attrs.get("Image", "")) or None
        image_labels: dict[str, str] = {}
        image_tags: list[str] = []
        try:
            if image_id:
                found = client.images.get(image_id)
                image_labels, image_tags = dict(found.labels or {}), list(found.tags)
        except DockerException:
            pass  # the image may be gone; the container still says which it ran
        rows.append(
            ColorStatus(
                color=color,
                container=str(container.name),
                image=labels.get(LABEL_IMAGE) or attrs.get("Config", {}).get("Image"),
                image_id=image_id,
                image_tags=image_tags,
                git_sha=image_labels.get(REVISION_LABEL),
                release=labels.get(LABEL_RELEASE),
                state=str(state.get("Status", "unknown")),
                health=(state.get("Health") or {}).get("Status"),
                port=int(labels.get(LABEL_PORT) or port),
                weight=weight,
                started_at=state.get("StartedAt"),
            )
        )
    return rows


def prune_images(
    settings: Settings, *, keep: int, client: docker.DockerClient | None = None
) -> list[str]:
    """Remove the service's images beyond the ``keep`` newest; never one a container uses.

    Keeping the last few images local means a rollback to a previous version needs no
    pull (and works where no registry is reachable at all).
    """
    client = client or connect(settings)
    repository = settings.raw.build.repository or settings.service
    try:
        images = client.images.list(name=repository)
        in_use = {c.image.id for c in client.containers.list(all=True) if c.image is not None}
    except (DockerException, RequestException) as exc:
        raise InfraError(f"cannot list images: {docker_message(exc)}") from None
    images.sort(key=lambda image: str(image.attrs.get("Created", "")), reverse=True)
    removed: list[str] = []
    for image in images[keep:]:
        if image.id in in_use:
            continue
        with contextlib.suppress(DockerException):
            client.images.remove(str(image.id), force=False, noprune=False)
            removed.append(", ".join(image.tags) or str(image.id))
    return removed
