"""The Docker engine connection shared by ``build``, ``deploy`` and ``ps``.

The engine is the Docker host's (:func:`releasegate.hosts.transport.transport`: the one
the Docker SDK finds in the environment, or one reached over ``DOCKER_HOST=ssh://``).
An engine that does not answer is an :class:`InfraError` (exit 3).
"""

from __future__ import annotations

import docker
from docker.errors import DockerException

from releasegate.config import Settings
from releasegate.errors import InfraError
from releasegate.hosts.transport import transport
from releasegate.secrets import redact

# Labels releasegate puts on what it creates, so that it can find (and clean) them again.
LABEL_SERVICE = "releasegate.service"
LABEL_COLOR = "releasegate.color"
LABEL_RELEASE = "releasegate.release"
LABEL_IMAGE = "releasegate.image"
LABEL_PORT = "releasegate.port"


def connect(settings: Settings, timeout: float = 60.0) -> docker.DockerClient:
    """A client of the Docker host's engine that answered a ping; InfraError otherwise."""
    host = transport(settings)
    try:
        client = host.docker_client(timeout)
        client.ping()
    except DockerException as exc:
        raise InfraError(
            f"cannot reach the Docker engine on {host.describe()}: {docker_message(exc)}"
        ) from None
    return client


def docker_message(exc: BaseException) -> str:
    """A one-line reason from a Docker SDK error, secrets removed."""
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact(lines[-1] if lines else text)
