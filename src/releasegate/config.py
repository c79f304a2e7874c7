"""``releasegate.toml``: the raw file model, its validation, and the resolved runtime settings.

The file never holds a secret: store URLs are named by the environment variable that
carries them (``url_env``). Any key can be overridden with ``RELEASEGATE_<SECTION>__<KEY>``
(for example ``RELEASEGATE_MIGRATIONS__LOCK_TIMEOUT=10s``; a list or a table as JSON,
``RELEASEGATE_SLO__THRESHOLDS='{"total": ["p95 < 300ms"]}'``). Validation happens before
anything touches a database.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator

# Re-exported: callers import these from releasegate.config.
from releasegate.config_base import Duration as Duration
from releasegate.config_base import Ratio, Section, threshold_rules
from releasegate.config_base import format_duration as format_duration
from releasegate.config_base import parse_duration as parse_duration
from releasegate.config_files import apply_environment_file, read_toml_file
from releasegate.config_release import CanarySection as CanarySection
from releasegate.config_release import ReleaseSection as ReleaseSection
from releasegate.errors import ConfigError
from releasegate.naming import SERVICE_NAME_PATTERN
from releasegate.secrets import check_url, mask_url, register_secret

DEFAULT_CONFIG_NAME = "releasegate.toml"
ENV_PREFIX = "RELEASEGATE_"
# Variables with this prefix that are not key overrides.
RESERVED_ENV = {
    "RELEASEGATE_CONFIG",
    "RELEASEGATE_DEBUG",
    "RELEASEGATE_PERFORMER",
    "RELEASEGATE_ENVIRONMENT",
}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(value: str) -> str:
    if "://" in value:
        raise ValueError(
            "must name an environment variable, not hold a URL (secrets never go in the file)"
        )
    if not _ENV_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


EnvVarName = Annotated[str, BeforeValidator(lambda v: _env_name(str(v)))]


class ServiceSection(Section):
    name: str = Field(pattern=SERVICE_NAME_PATTERN)


class PostgresSection(Section):
    url_env: EnvVarName = "DATABASE_URL"
    # Database used to create and drop scratch databases on the same server.
    maintenance_db: str = "postgres"
    connect_timeout: Duration = 5.0
    # True: the URL is as the DOCKER_HOST=ssh:// host sees it, reached through a forward.
    via_ssh: bool = False


class MigrationsSection(Section):
    postgres: Path = Path("migrations/postgres")
    alembic_ini: Path | None = None
    # "package.module:attribute" naming the service's SQLAlchemy MetaData, for drift checks.
    metadata: str | None = None
    python_path: list[Path] = Field(default_factory=list)
    lock_timeout: Duration = 5.0
    statement_timeout: Duration = 300.0
    lock_retries: int = Field(default=3, ge=0, le=100)
    retry_backoff: Duration = 2.0
    # Prepares an empty scratch database before the first revision (migrate test):
    # a SQL file, or "package.module:function" called with a SQLAlchemy Connection.
    baseline: str | None = None
    # Revision ids (or unique prefixes) to treat as irreversible, without editing them.
    irreversible: list[str] = Field(default_factory=list)

    @field_validator("metadata")
    @classmethod
    def _metadata_ref(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[\w.]+:[\w.]+$", value):
            raise ValueError("must look like 'package.module:attribute'")
        return value


class LockSection(Section):
    wait: Duration = 30.0
    poll_interval: Duration = 0.5


class LintSection(Section):
    fail_on: Literal["warning", "error", "never"] = "error"
    exclude_rules: list[str] = Field(default_factory=list)
    pg_version: str | None = None


class RedisSection(Section):
    """Redis: data migrations and logical backups. Absent ``url_env`` value = no Redis."""

    url_env: EnvVarName = "REDIS_URL"
    # Key patterns (SCAN MATCH) that backups export and count; the service's keyspace.
    patterns: list[str] = Field(default_factory=lambda: ["*"])
    migrations: Path = Path("migrations/redis")
    version_key: str = "releasegate:redis:version"
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    connect_timeout: Duration = 5.0
    # Keys the service deletes freely (caches): a content comparison does not count them
    # as missing or changed.
    volatile_patterns: list[str] = Field(default_factory=list)
    # As postgres.via_ssh: the URL is as the Docker host sees it, reached through ssh.
    via_ssh: bool = False


class QdrantSection(Section):
    """Qdrant: a server when the ``url_env`` variable is set, else embedded at ``path``."""

    url_env: EnvVarName = "QDRANT_URL"
    api_key_env: EnvVarName = "QDRANT_API_KEY"
    path: Path | None = None
    migrations: Path = Path("migrations/qdrant")
    # Logical collection names (aliases) that backups and counts cover.
    collections: list[str] = Field(default_factory=list)
    batch_size: int = Field(default=256, ge=1, le=10_000)
    verify_sample: int = Field(default=32, ge=0)
    timeout: Duration = 30.0
    # As postgres.via_ssh (a server URL only; plain http, as its TLS name would not match).
    via_ssh: bool = False


class BackupSection(Section):
    dir: Path = Path(".releasegate/backups")
    postgres_format: Literal["custom", "directory"] = "custom"
    jobs: int = Field(default=2, ge=1, le=64)
    keep: int = Field(default=5, ge=1)
    verify_sample: int = Field(default=32, ge=0)
    # Per-row digests (postgres.rows.gz) in the dump's snapshot, for content comparisons.
    fingerprints: bool = True
    # Preflight: free space must be at least the size estimate times this; 0 skips the check.
    free_space_factor: float = Field(default=1.0, ge=0)
    # Where each set is kept once created and checked: None keeps it only in ``dir``;
    # "s3://BUCKET/PREFIX" uploads it to an S3-compatible bucket (credentials from the
    # standard AWS variables), "sftp://USER@HOST[:PORT]/PATH" to a folder on a backup host
    # (pinned host key and key file as in [ssh]); list, verify, restore and rollback
    # fetch it from there.
    destination: str | None = Field(
        default=None, pattern=r"^(s3://[^/\s]+(/\S*)?|sftp://[^/\s]+/\S+)$"
    )
    # Variable holding the endpoint URL of an S3-compatible service other than AWS.
    endpoint_url_env: EnvVarName | None = None


class BuildSection(Section):
    """``releasegate build``: how the service image is built."""

    context: Path = Path(".")
    dockerfile: str = "Dockerfile"
    # Image repository; tags are the git sha (and the version when given).
    repository: str | None = None
    build_args: dict[str, str] = Field(default_factory=dict)
    # "auto": build offline (local base image, host-built wheels) when no registry answers.
    offline: Literal["auto", "always", "never"] = "auto"
    # Offline mode: the local base image (scripts/build-base-image.sh makes it), passed as
    # build arg BASE_IMAGE, and the requirements (relative to context) built into wheels/.
    base_image: str = "releasegate/python:3.11-bookworm"
    requirements: Path | None = Path("requirements.txt")
    # Value of the org.opencontainers.image.source label (default: the git remote).
    source: str | None = None


class DeploySection(Section):
    """``releasegate deploy``: how a color's container runs on the Docker host."""

    container_port: int = Field(default=8000, ge=1, le=65535)
    blue_port: int = Field(default=18081, ge=1, le=65535)
    green_port: int = Field(default=18082, ge=1, le=65535)
    # None: Docker's default bridge with the color's port published on host_ip;
    # "host": host networking (the app listens on the color's port, see port_env);
    # any other value: that Docker network, port published as with the bridge.
    network: str | None = None
    host_ip: str = "127.0.0.1"
    # Variable that tells the app which port to listen on (required with host networking).
    port_env: EnvVarName | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # Names of host environment variables passed into the container (secrets stay in env).
    env_passthrough: list[EnvVarName] = Field(default_factory=list)
    memory: str | None = "512m"
    cpus: float | None = Field(default=1.0, gt=0)
    readiness_path: str = "/readyz"
    ready_timeout: Duration = 60.0
    drain: Duration = 5.0
    keep_images: int = Field(default=3, ge=1)
    # With DOCKER_HOST=ssh://...: the Docker engine's socket on that host, forwarded here.
    remote_docker_socket: str = Field(default="/var/run/docker.sock", pattern=r"^/[^:\s]+$")


class SshSection(Section):
    """How releasegate reaches a Docker host named by ``DOCKER_HOST=ssh://USER@HOST[:PORT]``
    and a backup host named by ``backup.destination = "sftp://USER@HOST[:PORT]/PATH"``.

    The host key must be pinned in the known_hosts file (never trusted on first use);
    unset variables leave ssh's own defaults (~/.ssh/known_hosts, ~/.ssh/id_*).
    """

    # Variable naming the known_hosts file that pins the host key.
    known_hosts_env: EnvVarName = "RELEASEGATE_SSH_KNOWN_HOSTS"
    # Variable naming the private key file to log in with.
    identity_file_env: EnvVarName = "RELEASEGATE_SSH_IDENTITY_FILE"
    connect_timeout: Duration = Field(default=10.0, gt=0)


class RouterSection(Section):
    """The HAProxy router in front of blue and green."""

    mode: Literal["host", "container"] = "host"
    bind: str = Field(default="127.0.0.1:18080", pattern=r"^\S+$")
    image: str = "haproxy:2.6"
    # Host mode: the haproxy executable (a name looked up on PATH and in /usr/sbin, or a path).
    binary: str = "haproxy"
    runtime_dir: Path = Path(".releasegate/router")
    health_path: str = Field(default="/healthz", pattern=r"^/\S*$")
    check_interval: Duration = Field(default=1.0, ge=0.01)
    maxconn: int = Field(default=4096, ge=1, le=1_000_000)
    connect_timeout: Duration = 2.0
    client_timeout: Duration = 30.0
    server_timeout: Duration = 30.0
    # How long a soft stop may let open connections finish (haproxy hard-stop-after).
    stop_timeout: Duration = 10.0
    # Bytes of the in-memory ring HAProxy logs every request into (about 30 a request):
    # it must hold what arrives between two reads of a canary step.
    traffic_ring_size: int = Field(default=1 << 20, ge=1 << 14, le=1 << 30)


class SmokeSection(Section):
    file: Path = Path("smoke.toml")
    # Base URL used when ``releasegate smoke`` gets no --target.
    host: str | None = None


class SloCompareSection(Section):
    """The comparative gate: green may be worse than blue by at most these margins."""

    enabled: bool = False
    scopes: list[str] = Field(default_factory=lambda: ["total"])
    latency_metric: Literal["p50", "p90", "p95", "p99", "avg"] = "p95"
    # Allowed: green <= blue * (1 + latency_margin) + latency_slack.
    latency_margin: Ratio = 0.2
    latency_slack: Duration = 0.005
    # Allowed: green error rate <= blue error rate + error_rate_margin (absolute).
    error_rate_margin: Ratio = 0.005


def _locust_tag(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$", value):
        raise ValueError(f"{value!r} is not a Locust tag (letters, digits, _ . : -)")
    return value


LocustTag = Annotated[str, BeforeValidator(_locust_tag)]


class SloSection(Section):
    """The Locust SLO gate; thresholds are k6-style rules per scope ("total" or a name)."""

    locustfile: Path = Path("loadtests/locustfile.py")
    users: int = Field(default=20, ge=1)
    spawn_rate: float = Field(default=10.0, gt=0)
    # The measured window; Locust runs for warmup + duration.
    duration: Duration = 30.0
    warmup: Duration = 5.0
    min_requests: int = Field(default=200, ge=1)
    processes: int = Field(default=1, ge=1)
    thresholds: dict[str, list[str]] = Field(default_factory=dict)
    # Base URL used when ``releasegate gate`` gets no --target.
    host: str | None = None
    # Stop early and fail when an upper-bound rule is exceeded by this factor.
    abort_factor: float | None = Field(default=None, gt=1)
    # External Locust workers to wait for (distributed mode); releasegate runs the master.
    workers: int = Field(default=0, ge=0)
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = Field(default=5557, ge=1, le=65535)
    compare: SloCompareSection = Field(default_factory=SloCompareSection)
    # Locust --tags / --exclude-tags: only tasks with one of `tags` and none of
    # `exclude_tags` run (e.g. exclude_tags = ["write"] where writes must not happen).
    tags: list[LocustTag] | None = None
    exclude_tags: list[LocustTag] | None = None

    @field_validator("tags")
    @classmethod
    def _some_tags(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list runs no task; remove the key to run every task")
        return value

    @field_validator("thresholds")
    @classmethod
    def _rules(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return threshold_rules(value)


def _hook_command(value: object) -> list[str]:
    # One string is split like a shell would (shlex) but never run by a shell.
    import shlex

    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise ValueError("expected a command: a list of argument strings, or one string")
    if not value or not value[0]:
        raise ValueError("the command is empty")
    return value


HookCommand = Annotated[list[str], BeforeValidator(_hook_command)]


class HooksSection(Section):
    """Commands run on this machine after a gate (see :mod:`releasegate.hooks`)."""

    after_gate: HookCommand | None = None
    after_watch: HookCommand | None = None
    timeout: Duration = Field(default=120.0, gt=0)


class RawConfig(Section):
    """The file as written, after overrides; see README's config reference."""

    service: ServiceSection
    postgres: PostgresSection = Field(default_factory=PostgresSection)
    migrations: MigrationsSection = Field(default_factory=MigrationsSection)
    lock: LockSection = Field(default_factory=LockSection)
    lint: LintSection = Field(default_factory=LintSection)
    redis: RedisSection | None = None
    qdrant: QdrantSection | None = None
    backup: BackupSection = Field(default_factory=BackupSection)
    build: BuildSection = Field(default_factory=BuildSection)
    deploy: DeploySection = Field(default_factory=DeploySection)
    ssh: SshSection = Field(default_factory=SshSection)
    router: RouterSection = Field(default_factory=RouterSection)
    smoke: SmokeSection = Field(default_factory=SmokeSection)
    slo: SloSection = Field(default_factory=SloSection)
    release: ReleaseSection = Field(default_factory=ReleaseSection)
    hooks: HooksSection = Field(default_factory=HooksSection)


@dataclass(frozen=True)
class Settings:
    """The resolved runtime configuration: absolute paths, secrets looked up on demand."""

    path: Path
    raw: RawConfig
    env: Mapping[str, str]
    # releasegate.<environment>.toml when one was laid over the file (config_files).
    environment_path: Path | None = None

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def service(self) -> str:
        return self.raw.service.name

    def resolve_path(self, value: Path) -> Path:
        return value if value.is_absolute() else (self.root / value).resolve()

    @property
    def migrations_dir(self) -> Path:
        return self.resolve_path(self.raw.migrations.postgres)

    @property
    def python_path(self) -> list[Path]:
        return [self.resolve_path(p) for p in self.raw.migrations.python_path]

    def _url_from(self, var: str, key: str) -> str:
        url = self.env.get(var, "")
        if not url:
            raise ConfigError(f"environment variable {var} ({key}) is not set")
        check_url(url, f"${var}")
        return url

    def _reachable(self, url: str, via_ssh: bool, key: str) -> str:
        """``url``, or with ``via_ssh`` the local end of a forward to it through the ssh
        connection to the Docker host (the URL is as that host sees it)."""
        if not via_ssh:
            return url
        from releasegate.hosts.transport import transport

        return transport(self).store_url(url, key)

    def postgres_url(self) -> str:
        """The Postgres URL to connect to (see ``via_ssh``); a config error if not set."""
        section = self.raw.postgres
        url = self._url_from(section.url_env, "postgres.url_env")
        return self._reachable(url, section.via_ssh, "postgres.via_ssh")

    def redis_url(self) -> str:
        """The Redis URL to connect to (see ``via_ssh``); a config error without [redis]."""
        section = self.raw.redis
        if section is None:
            raise ConfigError(f"{self.path.name} has no [redis] section")
        url = self._url_from(section.url_env, "redis.url_env")
        return self._reachable(url, section.via_ssh, "redis.via_ssh")

    def qdrant_location(self) -> tuple[str | None, Path | None, str | None]:
        """(server URL, embedded path, API key): a server when its variable is set."""
        if self.raw.qdrant is None:
            raise ConfigError(f"{self.path.name} has no [qdrant] section")
        section = self.raw.qdrant
        url = self.env.get(section.url_env) or None
        api_key = self.env.get(section.api_key_env) or None
        if url:
            check_url(url, f"${section.url_env}")
            register_secret(api_key)
            return self._reachable(url, section.via_ssh, "qdrant.via_ssh"), None, api_key
        if section.path is None:
            raise ConfigError(
                f"environment variable {section.url_env} (qdrant.url_env) is not set"
                " and qdrant.path names no embedded storage"
            )
        return None, self.resolve_path(section.path), None

    def describe(self) -> dict[str, Any]:
        """The resolved config as plain data, every secret masked."""
        data = self.raw.model_dump(mode="json")
        for section in ("postgres", "redis", "qdrant"):
            values = data.get(section)
            if values is None:
                continue
            var = values["url_env"]
            url = self.env.get(var)
            if url:
                check_url(url, f"${var}")
            values["url"] = mask_url(url) if url else f"<{var} is not set>"
        data["migrations"]["postgres"] = str(self.migrations_dir)
        layers = {"environment_config": str(self.environment_path)} if self.environment_path else {}
        return {"config": str(self.path), **layers, **data}


def find_config(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The config file: the argument, else ``RELEASEGATE_CONFIG``, else ./releasegate.toml."""
    chosen = Path(path or env.get("RELEASEGATE_CONFIG") or DEFAULT_CONFIG_NAME)
    if not chosen.is_file():
        raise ConfigError(f"config file not found: {chosen} (use --config or RELEASEGATE_CONFIG)")
    return chosen.resolve()


def _apply_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Fold ``RELEASEGATE_SECTION__KEY`` variables into ``data``; returns key -> variable."""
    origins: dict[str, str] = {}
    for var, value in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var in RESERVED_ENV or "__" not in var:
            continue
        path = [part.lower() for part in var[len(ENV_PREFIX) :].split("__")]
        if any(not part for part in path):
            raise ConfigError(f"{var}: malformed override name")
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{var}: {'.'.join(path)} is not a section")
            node = child
        parsed: Any = value
        # A list or a table (e.g. slo.thresholds, whose scopes no variable name can spell)
        # is given as JSON.
        opening = value.strip()[:1]
        if opening in ("[", "{"):
            kind = "list" if opening == "[" else "table"
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{var}: invalid JSON {kind}: {exc.msg} (line {exc.lineno} column {exc.colno})"
                ) from None
        node[path[-1]] = parsed
        origins[".".join(path)] = var
    return origins


def _format_validation_error(exc: ValidationError, source: str, origins: Mapping[str, str]) -> str:
    def origin(key: str) -> str | None:
        # The error may sit above an override (unknown section) or below it (list item).
        for name, var in origins.items():
            if key == name or key.startswith(f"{name}.") or name.startswith(f"{key}."):
                return var
        return None

    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        where = f" (from {var})" if (var := origin(key)) else ""
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'{where}")
        elif err["type"] == "missing":
            problems.append(f"missing required key '{key}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {msg}{where}")
    return f"{source}: " + "; ".join(problems)


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read, override and validate the config file; raise :class:`ConfigError` on any problem."""
    env = dict(os.environ if env is None else env)
    config_path = find_config(path, env)
    data = read_toml_file(config_path)
    environment_path, environment_keys = apply_environment_file(data, config_path, env)
    origins = {key: environment_path.name for key in environment_keys} if environment_path else {}
    origins.update(_apply_overrides(data, env))
    try:
        raw = RawConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, config_path.name, origins)) from None
    return Settings(path=config_path, raw=raw, env=env, environment_path=environment_path)
