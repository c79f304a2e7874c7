"""The Docker engine connection shared by ``build``, ``deploy`` and ``ps``.

The engine is whatever the Docker SDK finds in the environment (``DOCKER_HOST`` or the
local socket). An engine that does not answer is an :class:`InfraError` (exit 3).
"""

from __future__ import annotations

import docker
from docker.errors import DockerException

from releasegate.errors import InfraError
from releasegate.secrets import redact

# Labels releasegate puts on what it creates, so that it can find (and clean) them again.
LABEL_SERVICE = "releasegate.service"
LABEL_COLOR = "releasegate.color"
LABEL_RELEASE = "releasegate.release"
LABEL_IMAGE = "releasegate.image"
LABEL_PORT = "releasegate.port"


def connect(timeout: float = 60.0) -> docker.DockerClient:
    """A client of the Docker engine that answered a ping; InfraError otherwise."""
    try:
        client = docker.from_env(timeout=max(1, round(timeout)))
        client.ping()
    except DockerException as exc:
        raise InfraError(f"cannot reach the Docker engine: {docker_message(exc)}") from None
    return client


def docker_message(exc: BaseException) -> str:
    """A one-line reason from a Docker SDK error, secrets removed."""
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact(lines[-1] if lines else text)
