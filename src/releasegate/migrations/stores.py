"""Migrations across every store, in one documented order.

``up`` runs Postgres first, then Redis, then Qdrant: the schema is expanded before data
in the other stores is reshaped for the code that reads all three, and Qdrant, whose
copies are the slowest, comes last. ``down`` runs in the reverse order. Each store keeps
its own lock discipline and records its own release in the ledger; a failure stops the
run at that store, leaving the stores before it migrated (the release pipeline decides
whether to undo them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from releasegate.config import Settings
from releasegate.errors import ConfigError

STORES: tuple[str, ...] = ("postgres", "redis", "qdrant")


@dataclass(frozen=True)
class StoreStep:
    """One version applied or undone in one store, for progress lines."""

    store: str
    version: str
    direction: str
    status: str
    duration_s: float
    note: str = ""


StoreStepCallback = Callable[[StoreStep], None]


def configured_stores(settings: Settings) -> list[str]:
    """The stores this config manages: Postgres always; Redis and Qdrant when configured."""
    stores = ["postgres"]
    if settings.raw.redis is not None:
        stores.append("redis")
    if settings.raw.qdrant is not None:
        stores.append("qdrant")
    return stores


def select_stores(settings: Settings, wanted: str | None) -> list[str]:
    """``wanted`` (one store) or every configured store, in the documented order."""
    available = configured_stores(settings)
    if wanted is None:
        return available
    if wanted not in STORES:
        raise ConfigError(f"unknown store {wanted!r}: expected one of {', '.join(STORES)}")
    if wanted not in available:
        raise ConfigError(f"{settings.path.name} has no [{wanted}] section")
    return [wanted]


def status(settings: Settings, stores: list[str]) -> dict[str, Any]:
    """Each store's status object (with ``ok``, ``problems`` and ``to_dict()``)."""
    result: dict[str, Any] = {}
    for store in stores:
        if store == "postgres":
            from releasegate.migrations.commands import status as pg_status

            result[store] = pg_status(settings)
        elif store == "redis":
            from releasegate.migrations.redis import versions as redis_versions

            result[store] = redis_versions.status(settings)
        else:
            from releasegate.migrations import qdrant

            result[store] = qdrant.status(settings)
    return result


def _emit(callback: StoreStepCallback | None, step: StoreStep) -> None:
    if callback is not None:
        callback(step)


def up(
    settings: Settings,
    stores: list[str],
    to: str | None = None,
    *,
    on_step: StoreStepCallback | None = None,
) -> dict[str, Any]:
    """Migrate each store up, in order; ``to`` only with a single store."""
    if to is not None and len(stores) > 1:
        raise ConfigError("--to names a version of one store: add --store")
    results: dict[str, Any] = {}
    for store in stores:
        results[store] = _run(settings, store, "up", to, on_step)
    return results


def down(
    settings: Settings, store: str, to: str, *, on_step: StoreStepCallback | None = None
) -> Any:
    """Migrate one store down to ``to``."""
    return _run(settings, store, "down", to, on_step)


def _run(
    settings: Settings,
    store: str,
    direction: str,
    to: str | None,
    on_step: StoreStepCallback | None,
) -> Any:
    if store == "postgres":
        from releasegate.migrations import commands as pg

        def pg_step(s: Any) -> None:
            _emit(
                on_step,
                StoreStep(store, s.revision, str(s.direction), str(s.status), s.duration_s),
            )

        if direction == "up":
            return pg.up(settings, to, on_step=pg_step)
        assert to is not None
        return pg.down(settings, to, on_step=pg_step)
    if store == "redis":
        from releasegate.migrations.redis import engine as redis_engine

        def redis_step(s: Any) -> None:
            changed = s.keys.get("changed", 0)
            _emit(
                on_step,
                StoreStep(
                    store,
                    s.version,
                    str(s.direction),
                    str(s.status),
                    s.duration_s,
                    f"{changed} keys changed" + (" (resumed)" if s.resumed else ""),
                ),
            )

        if direction == "up":
            return redis_engine.up(settings, to, on_step=redis_step)
        assert to is not None
        return redis_engine.down(settings, to, on_step=redis_step)
    from releasegate.migrations.qdrant import engine as qdrant_engine

    def qdrant_step(s: Any) -> None:
        _emit(
            on_step,
            StoreStep(
                store,
                s.version,
                str(s.direction),
                str(s.status),
                s.duration_s,
                f"{s.collection} -> {s.alias_target}",
            ),
        )

    if direction == "up":
        return qdrant_engine.up(settings, to, qdrant_step)
    assert to is not None
    return qdrant_engine.down(settings, to, qdrant_step)


# -- expand/contract across stores (the release pipeline) ---------------------------------
#
# Inside a release, Redis and Qdrant migrations run in expand/contract form: ``expand``
# writes the new layout beside the old one before promotion, ``catch_up`` carries what
# the live version wrote meanwhile (for Qdrant it also moves the alias), ``contract``
# removes the old layout once the old version is gone, and ``undo`` reverses an expand
# (``promoted``: carrying the new version's writes back into the old layout first).
PHASED_STORES: tuple[str, ...] = ("redis", "qdrant")


def _phases(store: str) -> Any:
    if store == "redis":
        from releasegate.migrations.redis import phases as redis_phases

        return redis_phases
    if store == "qdrant":
        from releasegate.migrations.qdrant import phases as qdrant_phases

        return qdrant_phases
    raise ConfigError(f"store {store!r} has no expand/contract form")


def expand(settings: Settings, store: str) -> Any:
    """Write the new layout of ``store``'s pending migrations beside the old one."""
    return _phases(store).expand(settings)


def catch_up(settings: Settings, store: str) -> Any:
    """Carry what the live version wrote since the expand into the new layout."""
    module = _phases(store)
    return module.switch(settings) if store == "qdrant" else module.catch_up(settings)


def contract(settings: Settings, store: str) -> Any:
    """Remove the old layout of an expanded store (the old version is gone)."""
    return _phases(store).contract(settings)


def undo_expand(settings: Settings, store: str, *, promoted: bool) -> Any:
    """Reverse an expand; after promotion, the new version's writes are carried back."""
    return _phases(store).undo(settings, promoted=promoted)


def expand_problems(settings: Settings, stores: list[str]) -> list[str]:
    """Pending migrations that cannot run in expand/contract form, one line each."""
    problems: list[str] = []
    for store in stores:
        if store in PHASED_STORES:
            problems += [f"{store}: {p}" for p in _phases(store).expand_problems(settings)]
    return problems
