"""``releasegate build``: the service image, labelled and tagged with the commit it holds.

Two modes, one Dockerfile:

- **registry** (online): the Dockerfile's own ``FROM`` (e.g. ``python:3.11-slim``) comes
  from a registry and ``pip`` inside the build uses the package index;
- **offline** (air-gapped): build arg ``BASE_IMAGE`` names the local base image
  (``build.base_image``, made by ``scripts/build-base-image.sh`` without any registry),
  ``OFFLINE=1`` tells the Dockerfile to ``pip install --no-index`` from ``wheels/``, which
  releasegate fills on the host first (:mod:`releasegate.deploy.wheels`). The build runs
  with no network at all, which proves the image can be rebuilt air-gapped.

``auto`` asks the Docker engine for the registry manifest of the Dockerfile's base image
(``docker manifest inspect`` semantics, no download) with a 3 s budget and builds offline
when no registry answers.

Every image carries the OCI labels ``org.opencontainers.image.revision`` (git sha),
``.version``, ``.created`` (RFC 3339; ``SOURCE_DATE_EPOCH`` when set, so that a rebuild
of the same commit reuses every cached layer and yields the same image id), ``.source``,
``.title`` and ``.base.name``, and is tagged ``<repository>:<sha12>`` plus any extra tags.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import docker
from docker.errors import DockerException, ImageNotFound
from requests.exceptions import RequestException

from releasegate.config import Settings
from releasegate.deploy.build_hints import network_hint
from releasegate.deploy.engine import connect, docker_message
from releasegate.deploy.wheels import WheelsResult, build_wheels, find_python
from releasegate.errors import CheckFailed, ConfigError, InfraError
from releasegate.runinfo import git_sha
from releasegate.secrets import redact

OfflineMode = Literal["auto", "always", "never"]
PROBE_TIMEOUT_S = 3.0
WHEELS_DIR = "wheels"
LABEL_PREFIX = "org.opencontainers.image"
# The Postgres head revision the image's code expects: a rehearsal that deploys this image
# as the baseline migrates an empty database to exactly that revision first.
MIGRATION_HEAD_LABEL = "releasegate.migrations.postgres"
# Log lines kept for explaining a failure (pip prints its retries well above the error).
FAILURE_CONTEXT_LINES = 400
# The tag's part after the colon: Docker allows [A-Za-z0-9_.-], at most 128 characters.
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ARG_RE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?\s*$", re.IGNORECASE)
_FROM_RE = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE)
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class BuildMode:
    """Whether a build runs offline, and why."""

    offline: bool
    reason: str


@dataclass(frozen=True)
class BuildResult:
    """An image built by :func:`build`."""

    image_id: str
    tags: list[str]
    repo_digest: str | None
    offline: bool
    mode_reason: str
    base_image: str | None
    git_sha: str | None
    version: str
    labels: dict[str, str]
    build_args: dict[str, str]
    size_bytes: int
    duration_s: float
    wheels: WheelsResult | None

    @property
    def ref(self) -> str:
        """What to deploy: the repo digest when the image was pushed, else the image id."""
        return self.repo_digest or self.image_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "ref": self.ref,
            "tags": self.tags,
            "repo_digest": self.repo_digest,
            "offline": self.offline,
            "mode_reason": self.mode_reason,
            "base_image": self.base_image,
            "git_sha": self.git_sha,
            "version": self.version,
            "labels": self.labels,
            "build_args": self.build_args,
            "size_bytes": self.size_bytes,
            "duration_s": round(self.duration_s, 3),
            "wheels": None if self.wheels is None else self.wheels.to_dict(),
        }


def base_image_of(dockerfile_text: str, build_args: Mapping[str, str] | None = None) -> str | None:
    """The image the first ``FROM`` names, with ``ARG`` defaults and build args applied."""
    values: dict[str, str] = {}
    for line in dockerfile_text.splitlines():
        if match := _ARG_RE.match(line):
            name, default = match.groups()
            values[name] = (build_args or {}).get(name, default or "")
        elif match := _FROM_RE.match(line):

            def substitute(var: re.Match[str]) -> str:
                name = var.group(1) or var.group(2)
                return (build_args or {}).get(name, values.get(name, ""))

            image = _VAR_RE.sub(substitute, match.group(1))
            return image or None
    return None


def registry_answers(image: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the engine gets the registry manifest of ``image`` within ``timeout``.

    Nothing is downloaded: the engine asks the registry for the manifest (the
    ``/distribution/<image>/json`` API), through its own DNS, proxy and mirror settings.
    """
    try:
        probe = docker.from_env(timeout=max(1, math.ceil(timeout)))
        try:
            probe.images.get_registry_data(image)
        finally:
            probe.close()
    except (DockerException, RequestException) as exc:
        return False, docker_message(exc)
    return True, "ok"


def choose_mode(mode: OfflineMode, probe_image: str | None) -> BuildMode:
    """Decide between the registry and the offline build (see the module docs)."""
    if mode == "always":
        return BuildMode(True, "offline mode requested")
    if mode == "never":
        return BuildMode(False, "registry mode requested")
    image = probe_image or "docker.io/library/busybox:latest"
    ok, why = registry_answers(image)
    if ok:
        return BuildMode(False, f"registry answered for {image}")
    return BuildMode(True, f"no registry answered for {image} ({why})")


def oci_labels(
    *,
    revision: str | None,
    version: str,
    created: datetime,
    source: str | None,
    title: str | None = None,
    base_name: str | None = None,
) -> dict[str, str]:
    """The OCI annotations releasegate puts on every image.

    ``title`` and ``base.name`` are set too, so that labels inherited from the base image
    (which may carry its own title) never describe the service image wrongly.
    """
    labels = {
        f"{LABEL_PREFIX}.revision": revision or "unknown",
        f"{LABEL_PREFIX}.version": version,
        f"{LABEL_PREFIX}.created": created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if source:
        labels[f"{LABEL_PREFIX}.source"] = source
    if title:
        labels[f"{LABEL_PREFIX}.title"] = title
    if base_name:
        labels[f"{LABEL_PREFIX}.base.name"] = base_name
    return labels


def created_time(env: Mapping[str, str], now: datetime) -> datetime:
    """``SOURCE_DATE_EPOCH`` when set (reproducible builds: same commit, same image id),
    else ``now``."""
    raw = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return now
    try:
        return datetime.fromtimestamp(int(raw), UTC)
    except (ValueError, OverflowError, OSError):
        raise ConfigError("SOURCE_DATE_EPOCH must be a Unix timestamp") from None


def image_tags(
    repository: str, revision: str | None, extra: Iterable[str], now: datetime
) -> list[str]:
    """``repository:<sha12>`` (or ``:build-<utc time>`` outside git), then the extra tags.

    An extra tag with a ``:`` or ``/`` is a full reference; otherwise it tags ``repository``.
    """
    first = revision[:12] if revision else f"build-{now.astimezone(UTC):%Y%m%d%H%M%S}"
    tags = [f"{repository}:{first}"]
    for tag in extra:
        full = tag if (":" in tag or "/" in tag) else f"{repository}:{tag}"
        _, _, name = full.rpartition(":")
        if "/" in name or not _TAG_RE.match(name):
            raise ConfigError(f"invalid image tag {tag!r}")
        if full not in tags:
            tags.append(full)
    return tags


def _clean_remote(url: str) -> str:
    """A git remote without credentials (``https://token@host/x`` -> ``https://host/x``)."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url


def source_url(settings: Settings) -> str | None:
    """``build.source``, else the GitHub Actions repository, else the git remote ``origin``."""
    if settings.raw.build.source:
        return settings.raw.build.source
    env = settings.env
    if env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        return f"{server}/{env['GITHUB_REPOSITORY']}"
    try:
        result = subprocess.run(
            ["git", "config", "--get", "remote.origin.url"],
            cwd=settings.root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    remote = result.stdout.strip()
    return _clean_remote(remote) if result.returncode == 0 and remote else None


def base_python_version(client: docker.DockerClient, image: str) -> str:
    """The full Python version of a local base image: its ``releasegate.python`` label,
    else asked of a throwaway container (no network)."""
    try:
        labels = client.images.get(image).labels or {}
    except ImageNotFound:
        raise ConfigError(
            f"offline base image {image} is missing: build it with scripts/build-base-image.sh"
        ) from None
    except DockerException as exc:
        raise InfraError(f"cannot inspect {image}: {docker_message(exc)}") from None
    if value := labels.get("releasegate.python"):
        return str(value)
    try:
        output = client.containers.run(
            image,
            ["python3", "-c", "import platform; print(platform.python_version())"],
            remove=True,
            network_mode="none",
        )
    except DockerException as exc:
        raise ConfigError(
            f"cannot run python3 in the offline base image {image}: {docker_message(exc)}"
        ) from None
    return bytes(output).decode().strip()


def _stream_build(
    client: docker.DockerClient,
    kwargs: dict[str, Any],
    on_log: Callable[[str], None] | None,
    *,
    dockerfile_text: str,
    offline: bool,
) -> str:
    """Run the build, passing its log lines on; return the image id.

    A failure whose log shows an unreachable registry or index says how to build
    without one (:func:`releasegate.deploy.build_hints.network_hint`).
    """
    image_id: str | None = None
    error: str | None = None
    recent: deque[str] = deque(maxlen=FAILURE_CONTEXT_LINES)
    try:
        for chunk in client.api.build(**kwargs):
            if "stream" in chunk:
                for line in str(chunk["stream"]).splitlines():
                    if not line.strip():
                        continue
                    recent.append(line)
                    if on_log:
                        on_log(redact(line.rstrip()))
            elif "error" in chunk:
                error = str(chunk.get("errorDetail", {}).get("message") or chunk["error"])
                if on_log:
                    on_log(redact(error.rstrip()))
            elif isinstance(chunk.get("aux"), dict) and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
    except (DockerException, RequestException) as exc:
        raise InfraError(f"image build interrupted: {docker_message(exc)}") from None
    if error is not None:
        lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
        message = f"image build failed: {lines[-1] if lines else error}"
        if hint := network_hint([*recent, *lines], dockerfile_text, offline=offline):
            message += f"; {hint}"
        raise CheckFailed(redact(message))
    if image_id is None:
        raise CheckFailed("image build finished without an image id")
    return image_id


def postgres_head(settings: Settings) -> str | None:
    """The single head of the source tree's Alembic chain, or None without one."""
    if not settings.migrations_dir.is_dir():
        return None
    from releasegate.migrations.project import AlembicProject

    heads = AlembicProject(settings).heads()
    return heads[0] if len(heads) == 1 else None


def build(
    settings: Settings,
    *,
    mode: OfflineMode | None = None,
    tags: Iterable[str] = (),
    build_args: Mapping[str, str] | None = None,
    version: str | None = None,
    no_cache: bool = False,
    on_log: Callable[[str], None] | None = None,
    client: docker.DockerClient | None = None,
) -> BuildResult:
    """Build the service image from ``[build]``; return its id, tags and labels.

    ``mode`` overrides ``build.offline``; ``build_args`` override ``build.build_args`` and
    the arguments releasegate sets itself (``BASE_IMAGE`` and ``OFFLINE=1`` offline,
    ``OFFLINE=0`` online, ``GIT_SHA`` always). ``on_log`` receives each build log line.
    A missing context, Dockerfile or offline base image is a :class:`ConfigError`, a
    failing Dockerfile step a :class:`CheckFailed`, an unreachable engine an
    :class:`InfraError`.
    """
    section = settings.raw.build
    started = time.monotonic()
    context = settings.resolve_path(section.context)
    if not context.is_dir():
        raise ConfigError(f"build context not found: {context}")
    dockerfile = context / section.dockerfile
    if not dockerfile.is_file():
        raise ConfigError(f"Dockerfile not found: {dockerfile}")
    dockerfile_text = dockerfile.read_text("utf-8")
    overrides = dict(build_args or {})
    user_args = {**section.build_args, **overrides}
    chosen = choose_mode(mode or section.offline, base_image_of(dockerfile_text, user_args))

    client = client or connect(settings)
    revision = git_sha(settings.root)
    now = datetime.now(UTC)
    repository = section.repository or settings.service
    all_tags = image_tags(repository, revision, tags, now)
    args = dict(section.build_args)
    wheels: WheelsResult | None = None
    if chosen.offline:
        target = base_python_version(client, section.base_image)
        args |= {"BASE_IMAGE": section.base_image, "OFFLINE": "1"}
        if section.requirements is not None:
            requirements = context / section.requirements
            if requirements.is_file():
                wheels = build_wheels(
                    requirements,
                    context / WHEELS_DIR,
                    python=find_python(target),
                    target_python=target,
                    on_log=on_log,
                )
                if on_log:
                    on_log(wheels.summary())
    else:
        args["OFFLINE"] = "0"
    args["GIT_SHA"] = revision or "unknown"
    args |= overrides
    image_version = version or (revision[:12] if revision else "0.0.0-dev")
    base_image = args.get("BASE_IMAGE") or base_image_of(dockerfile_text, args)
    labels = oci_labels(
        revision=revision,
        version=image_version,
        created=created_time(settings.env, now),
        source=source_url(settings),
        title=repository,
        base_name=base_image,
    )
    if head := postgres_head(settings):
        labels[MIGRATION_HEAD_LABEL] = head
    if on_log:
        on_log(
            f"building {all_tags[0]} ({'offline' if chosen.offline else 'registry'} mode:"
            f" {chosen.reason})"
        )
    image_id = _stream_build(
        client,
        {
            "path": str(context),
            "dockerfile": section.dockerfile,
            "tag": all_tags[0],
            "buildargs": args,
            "labels": labels,
            "rm": True,
            "forcerm": True,
            "decode": True,
            "nocache": no_cache,
            "pull": False,
            "network_mode": "none" if chosen.offline else None,
        },
        on_log,
        dockerfile_text=dockerfile_text,
        offline=chosen.offline,
    )
    try:
        for tag in all_tags[1:]:
            repo, _, name = tag.rpartition(":")
            client.api.tag(image_id, repo, name, force=True)
        info = client.images.get(image_id).attrs
    except DockerException as exc:
        raise InfraError(f"cannot tag the image: {docker_message(exc)}") from None
    digests = info.get("RepoDigests") or []
    return BuildResult(
        image_id=image_id,
        tags=all_tags,
        repo_digest=str(digests[0]) if digests else None,
        offline=chosen.offline,
        mode_reason=chosen.reason,
        base_image=base_image,
        git_sha=revision,
        version=image_version,
        labels=labels,
        build_args=args,
        size_bytes=int(info.get("Size") or 0),
        duration_s=time.monotonic() - started,
        wheels=wheels,
    )
