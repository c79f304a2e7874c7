"""Runtime settings of the example service, read from the environment once at start-up.

| variable | meaning |
|---|---|
| ``NOTES_VARIANT`` | ``v1``, ``v2``, ``v3-bad`` or ``v2-watch-bad`` (the image's build arg) |
| ``NOTES_DATABASE_URL`` | Postgres URL (required) |
| ``NOTES_REDIS_URL`` | Redis URL (required) |
| ``QDRANT_URL`` | Qdrant server URL; search uses Postgres text matching without it |
| ``NOTES_QDRANT`` | ``auto`` (default: on when ``QDRANT_URL`` is set), ``on`` or ``off`` |
| ``NOTES_QDRANT_COLLECTION`` | collection (or alias) searched; default ``documents`` |
| ``NOTES_HOST`` / ``NOTES_PORT`` | where uvicorn listens; default ``0.0.0.0:8000`` |
| ``NOTES_GIT_SHA`` | commit the image was built from (build arg ``GIT_SHA``) |
| ``NOTES_DB_POOL`` | Postgres connections kept open; default 10 |
| ``NOTES_CACHE_TTL`` / ``NOTES_SESSION_TTL`` | seconds; default 30 and 86400 |
| ``NOTES_BAD_LATENCY_MS`` / ``NOTES_BAD_ERROR_RATE`` | the ``v3-bad`` regression; 250, 0.05 |
| ``NOTES_WATCH_BAD_ERROR_RATE`` | share of failing requests of ``v2-watch-bad``; 0.5 |
| ``NOTES_FAIL_AFTER`` | ``v2-watch-bad`` also fails after this many API requests; 0: never |

Each variant declares the database revisions it works with (see :data:`VARIANTS`);
``/readyz`` fails when ``alembic_version`` is outside that window.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Variant = Literal["v1", "v2", "v3-bad", "v2-watch-bad"]


@dataclass(frozen=True)
class VariantSpec:
    """What one build of the service expects from its stores."""

    name: Variant
    # The revision this variant was written for (its schema at release time).
    expected_revision: str
    # Every revision it can run against: expand/contract keeps old and new code working
    # while the schema moves between the two releases.
    compatible_revisions: tuple[str, ...]
    # Column of ``users`` that holds the name shown with a document.
    name_column: Literal["full_name", "display_name"]
    # Redis session layout: key prefix and field style (see migrations/redis).
    session_prefix: str
    session_style: Literal["camel", "snake"]
    # Vector size of the Qdrant layout it was written for (64: v1, 128: after
    # migrations/qdrant/0001). Search embeds with the collection's actual size.
    qdrant_dim: int
    # The deliberate regression of v3-bad: latency and errors on the API endpoints.
    regression: bool = False
    # The deliberate defect of v2-watch-bad: errors once requests come through the router.
    watch_regression: bool = False


VARIANTS: dict[str, VariantSpec] = {
    # v1 reads users.full_name, which exists from 0001 until 0006 drops it (contract).
    "v1": VariantSpec(
        "v1", "0002", ("0002", "0003", "0004", "0005"), "full_name", "sess:", "camel", 64
    ),
    # v2 reads users.display_name (added by 0003) and the v2 Redis session layout.
    "v2": VariantSpec(
        "v2", "0006", ("0003", "0004", "0005", "0006"), "display_name", "session:", "snake", 128
    ),
    # v3-bad is v2 with a regression that only load (an SLO gate) reveals.
    "v3-bad": VariantSpec(
        "v3-bad",
        "0006",
        ("0003", "0004", "0005", "0006"),
        "display_name",
        "session:",
        "snake",
        128,
        regression=True,
    ),
    # v2-watch-bad is v2 with a defect only the post-promotion watch (through the router)
    # reveals; see notes_app.main.WatchRegression.
    "v2-watch-bad": VariantSpec(
        "v2-watch-bad",
        "0006",
        ("0003", "0004", "0005", "0006"),
        "display_name",
        "session:",
        "snake",
        128,
        watch_regression=True,
    ),
}


class SettingsError(ValueError):
    """The environment does not describe a runnable service."""


@dataclass(frozen=True)
class Settings:
    variant: VariantSpec
    database_url: str
    redis_url: str
    qdrant_url: str | None
    qdrant_collection: str
    host: str
    port: int
    git_sha: str
    db_pool: int
    cache_ttl: int
    session_ttl: int
    bad_latency_s: float
    bad_error_rate: float
    watch_bad_error_rate: float = 0.5
    fail_after: int = 0

    @property
    def qdrant_enabled(self) -> bool:
        return self.qdrant_url is not None


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "") or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "") or str(default)
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}")
    return value


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise SettingsError(f"environment variable {name} is not set")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: the process environment); SettingsError if invalid."""
    env = os.environ if env is None else env
    variant_name = env.get("NOTES_VARIANT", "") or "v1"
    if variant_name not in VARIANTS:
        raise SettingsError(f"NOTES_VARIANT must be one of {', '.join(VARIANTS)}")
    qdrant_mode = (env.get("NOTES_QDRANT", "") or "auto").lower()
    if qdrant_mode not in ("auto", "on", "off"):
        raise SettingsError("NOTES_QDRANT must be auto, on or off")
    qdrant_url = env.get("QDRANT_URL") or None
    if qdrant_mode == "off":
        qdrant_url = None
    elif qdrant_mode == "on" and qdrant_url is None:
        raise SettingsError("NOTES_QDRANT=on needs QDRANT_URL")
    return Settings(
        variant=VARIANTS[variant_name],
        database_url=_required(env, "NOTES_DATABASE_URL"),
        redis_url=_required(env, "NOTES_REDIS_URL"),
        qdrant_url=qdrant_url.rstrip("/") if qdrant_url else None,
        qdrant_collection=env.get("NOTES_QDRANT_COLLECTION", "") or "documents",
        host=env.get("NOTES_HOST", "") or "0.0.0.0",
        port=_int(env, "NOTES_PORT", 8000, 1, 65535),
        git_sha=env.get("NOTES_GIT_SHA", "") or "unknown",
        db_pool=_int(env, "NOTES_DB_POOL", 10, 1, 200),
        cache_ttl=_int(env, "NOTES_CACHE_TTL", 30, 1, 86400),
        session_ttl=_int(env, "NOTES_SESSION_TTL", 86400, 1, 365 * 86400),
        bad_latency_s=_int(env, "NOTES_BAD_LATENCY_MS", 250, 0, 60_000) / 1000,
        bad_error_rate=_float(env, "NOTES_BAD_ERROR_RATE", 0.05, 0.0, 1.0),
        watch_bad_error_rate=_float(env, "NOTES_WATCH_BAD_ERROR_RATE", 0.5, 0.0, 1.0),
        fail_after=_int(env, "NOTES_FAIL_AFTER", 0, 0, 1_000_000_000),
    )
