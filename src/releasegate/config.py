"""``releasegate.toml``: the raw file model, its validation, and the resolved runtime settings.

The file never holds a secret: store URLs are named by the environment variable that
carries them (``url_env``). Any key can be overridden with ``RELEASEGATE_<SECTION>__<KEY>``
(for example ``RELEASEGATE_MIGRATIONS__LOCK_TIMEOUT=10s``). Validation happens before
anything touches a database.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from releasegate.errors import ConfigError
from releasegate.secrets import mask_url, register_url

DEFAULT_CONFIG_NAME = "releasegate.toml"
ENV_PREFIX = "RELEASEGATE_"
# Variables with this prefix that are not key overrides.
RESERVED_ENV = {"RELEASEGATE_CONFIG", "RELEASEGATE_DEBUG", "RELEASEGATE_PERFORMER"}

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, None: 1.0}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: object) -> float:
    """Seconds from ``5``, ``2.5``, ``"500ms"``, ``"5s"``, ``"2m"`` or ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 5s, 2m")
    if not math.isfinite(seconds):  # TOML has nan and inf literals
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`, for display."""
    if seconds < 1:
        return f"{seconds * 1000:.12g}ms"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:.12g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class PostgresSection(Section):
    url_env: EnvVarName = "DATABASE_URL"
    # Database used to create and drop scratch databases on the same server.
    maintenance_db: str = "postgres"
    connect_timeout: Duration = 5.0


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


class RawConfig(Section):
    """The file as written, after overrides; see README's config reference."""

    service: ServiceSection
    postgres: PostgresSection = Field(default_factory=PostgresSection)
    migrations: MigrationsSection = Field(default_factory=MigrationsSection)
    lock: LockSection = Field(default_factory=LockSection)
    lint: LintSection = Field(default_factory=LintSection)


@dataclass(frozen=True)
class Settings:
    """The resolved runtime configuration: absolute paths, secrets looked up on demand."""

    path: Path
    raw: RawConfig
    env: Mapping[str, str]

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

    def postgres_url(self) -> str:
        """The Postgres URL from the environment; a config error when it is not set."""
        var = self.raw.postgres.url_env
        url = self.env.get(var, "")
        if not url:
            raise ConfigError(f"environment variable {var} (postgres.url_env) is not set")
        register_url(url)
        return url

    def describe(self) -> dict[str, Any]:
        """The resolved config as plain data, every secret masked."""
        data = self.raw.model_dump(mode="json")
        var = self.raw.postgres.url_env
        url = self.env.get(var)
        data["postgres"]["url"] = mask_url(url) if url else f"<{var} is not set>"
        data["migrations"]["postgres"] = str(self.migrations_dir)
        return {"config": str(self.path), **data}


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
        if value.strip().startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{var}: invalid JSON list: {exc.msg}") from None
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
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path.name}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc}") from None
    origins = _apply_overrides(data, env)
    try:
        raw = RawConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, config_path.name, origins)) from None
    return Settings(path=config_path, raw=raw, env=env)
