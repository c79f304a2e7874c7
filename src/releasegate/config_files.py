"""Reading config files: the TOML itself, and the per-environment file laid over it.

One repository serves several environments (staging, production) that differ in a few
keys: where the router listens, the Docker engine's socket, the backup destination. As
with a deploy tool's destinations, ``releasegate.toml`` holds what they share and
``releasegate.<environment>.toml`` beside it, when it exists, only what differs for the
environment named by ``RELEASEGATE_ENVIRONMENT`` (the reusable workflows set it to the
job's environment). Tables merge key by key; any other value, a list included, replaces
the base's. ``RELEASEGATE_SECTION__KEY`` variables still apply last.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from releasegate.errors import ConfigError

ENVIRONMENT_ENV = "RELEASEGATE_ENVIRONMENT"
# A file-name part: no separator, no leading dot.
_ENVIRONMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def refuse_bom(text: str, name: str) -> str:
    """``text`` unless it starts with a UTF-8 byte-order mark, which TOML parsers reject
    as "Invalid statement (at line 1, column 1)": then a ConfigError that says so."""
    if text.startswith("\ufeff"):
        raise ConfigError(
            f"{name} starts with a UTF-8 byte-order mark (BOM): save it as UTF-8 without BOM"
        )
    return text


def read_toml_file(path: Path) -> dict[str, Any]:
    """The parsed file; a :class:`ConfigError` naming it when it cannot be read or parsed."""
    try:
        return tomllib.loads(refuse_bom(path.read_text(encoding="utf-8"), path.name))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def environment_file(config_path: Path, environment: str) -> Path:
    """``releasegate.production.toml`` for ``releasegate.toml`` and ``production``."""
    return config_path.with_name(f"{config_path.stem}.{environment}{config_path.suffix}")


def _merge(base: dict[str, Any], overlay: Mapping[str, Any], prefix: str, keys: list[str]) -> None:
    for key, value in overlay.items():
        current = base.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            _merge(current, value, f"{prefix}{key}.", keys)
        else:
            base[key] = value
            keys.append(f"{prefix}{key}")


def apply_environment_file(
    data: dict[str, Any], config_path: Path, env: Mapping[str, str]
) -> tuple[Path | None, list[str]]:
    """Lay the environment's file over ``data`` in place.

    Returns the file used (None when no environment is named or it has no file of its own)
    and the dotted keys it set, so that a validation error can name where a value came from.
    """
    environment = env.get(ENVIRONMENT_ENV, "").strip()
    if not environment:
        return None, []
    if not _ENVIRONMENT_NAME.match(environment):
        raise ConfigError(
            f"{ENVIRONMENT_ENV}: {environment!r} is not an environment name"
            " (letters, digits, '-' and '_')"
        )
    path = environment_file(config_path, environment)
    if not path.is_file():
        return None, []
    keys: list[str] = []
    _merge(data, read_toml_file(path), "", keys)
    return path, keys
