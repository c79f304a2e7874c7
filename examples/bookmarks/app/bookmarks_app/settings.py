"""Runtime settings, read from the environment once at start-up.

| variable | meaning |
|---|---|
| ``BOOKMARKS_VARIANT`` | ``v1``, ``v2`` or ``v3-bad`` (the image's build arg) |
| ``DATABASE_URL`` | Postgres URL (required) |
| ``REDIS_URL`` | Redis URL (required) |
| ``BOOKMARKS_HOST`` / ``BOOKMARKS_PORT`` | where uvicorn listens; default ``0.0.0.0:8000`` |
| ``BOOKMARKS_GIT_SHA`` | commit the image was built from (build arg ``GIT_SHA``) |
| ``BOOKMARKS_DB_POOL`` | Postgres connections kept open; default 10 |
| ``BOOKMARKS_CACHE_TTL`` | seconds the cached count lives; default 30 |
| ``BOOKMARKS_BAD_LATENCY_MS`` | ``v3-bad``: added to ``GET /bookmarks``; default 400 |
| ``BOOKMARKS_BAD_ERROR_RATE`` | ``v3-bad``: share of ``GET /bookmarks`` answered 500; 0.3 |

Each variant declares the database revisions it runs on (:data:`VARIANTS`); ``/readyz``
fails outside that window.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Variant = Literal["v1", "v2", "v3-bad"]


@dataclass(frozen=True)
class VariantSpec:
    """What one build of the service expects from the database."""

    name: Variant
    # The revision this variant was written for (the head of its commit).
    expected_revision: str
    # Every revision it runs on: expand/contract keeps old and new code working while the
    # schema moves between two releases.
    compatible_revisions: tuple[str, ...]
    # The column that holds a bookmark's text: v1 knows only note (0001); v2 writes
    # description (0002) and, while it exists, note too.
    text_field: Literal["note", "description"]
    # The deliberate regression of v3-bad: slow and failing GET /bookmarks.
    regression: bool = False


VARIANTS: dict[str, VariantSpec] = {
    # v1 uses note, which exists from 0001 until 0003 drops it.
    "v1": VariantSpec("v1", "0001", ("0001", "0002"), "note"),
    "v2": VariantSpec("v2", "0003", ("0002", "0003"), "description"),
    # v2 with a regression only load (the SLO gate) reveals.
    "v3-bad": VariantSpec("v3-bad", "0003", ("0002", "0003"), "description", regression=True),
}


class SettingsError(ValueError):
    """The environment does not describe a runnable service."""


@dataclass(frozen=True)
class Settings:
    variant: VariantSpec
    database_url: str
    redis_url: str
    host: str
    port: int
    git_sha: str
    db_pool: int
    cache_ttl: int
    bad_latency_s: float
    bad_error_rate: float


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "") or str(default)
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low:g} and {high:g}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _number(env, name, default, low, high)
    if not value.is_integer():
        raise SettingsError(f"{name} must be an integer")
    return int(value)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise SettingsError(f"environment variable {name} is not set")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: the process environment); SettingsError if invalid."""
    env = os.environ if env is None else env
    variant = env.get("BOOKMARKS_VARIANT", "") or "v1"
    if variant not in VARIANTS:
        raise SettingsError(f"BOOKMARKS_VARIANT must be one of {', '.join(VARIANTS)}")
    return Settings(
        variant=VARIANTS[variant],
        database_url=_required(env, "DATABASE_URL"),
        redis_url=_required(env, "REDIS_URL"),
        host=env.get("BOOKMARKS_HOST", "") or "0.0.0.0",
        port=_integer(env, "BOOKMARKS_PORT", 8000, 1, 65535),
        git_sha=env.get("BOOKMARKS_GIT_SHA", "") or "unknown",
        db_pool=_integer(env, "BOOKMARKS_DB_POOL", 10, 1, 200),
        cache_ttl=_integer(env, "BOOKMARKS_CACHE_TTL", 30, 1, 86400),
        bad_latency_s=_integer(env, "BOOKMARKS_BAD_LATENCY_MS", 400, 0, 60_000) / 1000,
        bad_error_rate=_number(env, "BOOKMARKS_BAD_ERROR_RATE", 0.3, 0.0, 1.0),
    )
