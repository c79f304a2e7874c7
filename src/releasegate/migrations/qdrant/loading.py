"""Loading Qdrant migration modules, and where each logical collection stands.

A service reads a *logical* collection, say ``documents``, which is an **alias**. The
physical collections behind it are named ``documents__v1``, ``documents__v2``, ... .
Migration modules live in ``qdrant.migrations`` (default ``migrations/qdrant/``) and are
named ``NNNN_name.py``::

    \"\"\"Re-embed documents at 128 dimensions.\"\"\"   # first line = the migration's doc

    collection = "documents"          # the logical collection (alias) it changes

    def up(ctx):                      # build and verify ctx.new from ctx.old
        ctx.rebuild(vectors=..., payload_indexes={...}, transform=...)

    def down(ctx):                    # optional work before the alias moves back
        ctx.drop_new = True           # also drop ctx.new once the alias is back

    def down_transform(point):        # optional: a new point -> the old shape, which
        return ...                    # carries the new version's writes back on undo

    expand = False                    # optional: never run while the old version writes

The k-th migration of a collection (in version order) takes it from ``name__v{k}`` to
``name__v{k+1}``.

Where the applied version lives
===============================

In the alias map, and nowhere else in Qdrant: ``documents -> documents__v2`` *is* "the
first migration of ``documents`` is applied". The alias swap is the commit point of a
migration and is atomic, so the recorded version cannot disagree with what the service
reads. A separate marker (a metadata collection or a payload field) would be a second
write after the swap, and a crash between the two would leave them disagreeing. It also
means a restored backup (which records aliases) brings its version back with it. The
global version reported to the ledger (``qdrant_before``/``qdrant_after``) is the newest
migration such that it and every older one are applied, or ``base``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from releasegate.config import Settings
from releasegate.errors import ConfigError, MigrationFailed, MigrationScriptError, StateError
from releasegate.migrations.loader import load_module
from releasegate.stores.qdrant import CollectionSpec, PointData, QdrantStore, using

_FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.py$")
_PHYSICAL_RE = re.compile(r"^(?P<name>.+)__v(?P<n>\d+)$")
BASE = "base"

Transform = Callable[[PointData], PointData | None]
Check = Callable[[PointData, PointData], str | None]


def physical_name(collection: str, version: int) -> str:
    """``documents``, 2 -> ``documents__v2``."""
    return f"{collection}__v{version}"


def parse_physical(name: str) -> tuple[str, int] | None:
    """``documents__v2`` -> (``documents``, 2); None for other names."""
    match = _PHYSICAL_RE.match(name)
    return (match.group("name"), int(match.group("n"))) if match else None


class VerificationFailed(MigrationFailed):
    """The new collection does not hold what the migration should have produced."""


# -- loading migration modules -----------------------------------------------------------


@dataclass(frozen=True)
class QdrantMigration:
    """One migration module: its version, logical collection and physical names."""

    version: str
    name: str
    collection: str
    step: int  # the step-th migration of its collection: v{step} -> v{step + 1}
    doc: str
    path: Path
    module: ModuleType = field(repr=False, compare=False)

    @property
    def old(self) -> str:
        return physical_name(self.collection, self.step)

    @property
    def new(self) -> str:
        return physical_name(self.collection, self.step + 1)

    @property
    def down_transform(self) -> Transform | None:
        """The module's ``down_transform(point)``: a new point in the old shape, if any."""
        found = getattr(self.module, "down_transform", None)
        return found if callable(found) else None

    @property
    def expand_form(self) -> bool:
        """False when the module sets ``expand = False`` (it needs writers paused)."""
        return bool(getattr(self.module, "expand", True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "collection": self.collection,
            "from": self.old,
            "to": self.new,
            "doc": self.doc,
            "down_transform": self.down_transform is not None,
        }


def migrations_dir(settings: Settings) -> Path:
    if settings.raw.qdrant is None:
        raise ConfigError(f"{settings.path.name} has no [qdrant] section")
    return settings.resolve_path(settings.raw.qdrant.migrations)


def _load_module(path: Path) -> ModuleType:
    return load_module(path, f"releasegate_qdrant_{path.stem}", "Qdrant migration")


def load_migrations(settings: Settings) -> list[QdrantMigration]:
    """The migration modules of ``qdrant.migrations``, oldest first.

    Raises :class:`MigrationScriptError` (exit 2) for a missing folder, a duplicate
    version, a module that does not load, or one without ``collection``/``up``/``down``.
    """
    directory = migrations_dir(settings)
    if not directory.is_dir():
        raise MigrationScriptError(
            f"Qdrant migrations folder not found: {directory} (qdrant.migrations in the config)"
        )
    for extra in [settings.root, *settings.python_path]:
        if str(extra) not in sys.path:
            sys.path.insert(0, str(extra))
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.py")):
        match = _FILE_RE.match(path.name)
        if not match:
            continue
        if match.group(1) in found:
            raise MigrationScriptError(
                f"Qdrant migrations {found[match.group(1)].name} and {path.name}"
                f" share version {match.group(1)}"
            )
        found[match.group(1)] = path
    migrations: list[QdrantMigration] = []
    steps: dict[str, int] = {}
    for version, path in sorted(found.items()):
        module = _load_module(path)
        collection = getattr(module, "collection", None)
        if not isinstance(collection, str) or not collection or parse_physical(collection):
            raise MigrationScriptError(
                f"Qdrant migration {path.name} must set collection = '<logical name>'"
                " (the alias, not a name__vN collection)"
            )
        for hook in ("up", "down"):
            if not callable(getattr(module, hook, None)):
                raise MigrationScriptError(f"Qdrant migration {path.name} has no {hook}(ctx)")
        steps[collection] = steps.get(collection, 0) + 1
        doc = (module.__doc__ or "").strip().splitlines()
        migrations.append(
            QdrantMigration(
                version=version,
                name=_FILE_RE.match(path.name).group(2),  # type: ignore[union-attr]
                collection=collection,
                step=steps[collection],
                doc=doc[0] if doc else "",
                path=path,
                module=module,
            )
        )
    return migrations


# -- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectionState:
    """Where one logical collection stands."""

    collection: str
    physical: str | None  # what the alias points at
    applied: list[str]
    pending: list[str]
    leftovers: list[str]  # name__vN collections newer than the alias target, not aliased
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class QdrantStatus:
    """Where the Qdrant store stands against the migrations folder."""

    target: str
    version: str
    applied: list[QdrantMigration]
    pending: list[QdrantMigration]
    collections: list[CollectionState]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "version": self.version,
            "applied": [m.version for m in self.applied],
            "pending": [m.to_dict() for m in self.pending],
            "collections": [c.to_dict() for c in self.collections],
            "problems": list(self.problems),
        }


def _collection_state(
    collection: str,
    own: list[QdrantMigration],
    aliases: Mapping[str, str],
    live: set[str],
) -> CollectionState:
    versions = [m.version for m in own]
    target = aliases.get(collection)
    if target is None:
        if collection in live:
            problem = (
                f"{collection} is a collection, not an alias: releasegate migrates"
                f" {physical_name(collection, 1)}, {physical_name(collection, 2)}, ... behind"
                f" an alias {collection}"
            )
        else:
            problem = (
                f"{collection} does not exist: create {physical_name(collection, 1)} and the"
                " alias (bootstrap_collection) before migrating it"
            )
        return CollectionState(collection, None, [], versions, [], problem)
    parsed = parse_physical(target)
    if parsed is None or parsed[0] != collection:
        problem = f"alias {collection} points at {target}, not at a {collection}__vN collection"
        return CollectionState(collection, target, [], versions, [], problem)
    done = parsed[1] - 1
    leftovers = sorted(
        name
        for name in live
        if (p := parse_physical(name)) and p[0] == collection and p[1] > parsed[1]
    )
    if done > len(own):
        problem = (
            f"alias {collection} points at {target}, but the migrations only go up to"
            f" {physical_name(collection, len(own) + 1)}: Qdrant is ahead of the code"
            " (was the application rolled back?)"
        )
        return CollectionState(collection, target, versions, [], leftovers, problem)
    return CollectionState(collection, target, versions[:done], versions[done:], leftovers)


def current_status(store: QdrantStore, migrations: list[QdrantMigration]) -> QdrantStatus:
    """:func:`status` on an open store with the migrations already loaded."""
    aliases = store.aliases()
    live = set(store.collections())
    by_collection: dict[str, list[QdrantMigration]] = {}
    for m in migrations:
        by_collection.setdefault(m.collection, []).append(m)
    states = [_collection_state(c, own, aliases, live) for c, own in by_collection.items()]
    applied_versions = {v for s in states for v in s.applied}
    applied = [m for m in migrations if m.version in applied_versions]
    pending = [m for m in migrations if m.version not in applied_versions]
    problems = [s.problem for s in states if s.problem]
    version = BASE
    for m in migrations:
        if m.version not in applied_versions:
            break
        version = m.version
    gaps = [m.version for m in pending if any(a.version > m.version for a in applied)]
    if gaps:
        problems.append(
            f"migrations {', '.join(gaps)} are not applied while newer ones are:"
            " 'up' applies them in version order"
        )
    return QdrantStatus(store.target, version, applied, pending, states, problems)


def status(settings: Settings, *, store: QdrantStore | None = None) -> QdrantStatus:
    """Applied and pending Qdrant migrations, per logical collection, with any problems.

    Reads only Qdrant (no Postgres, no lock). Problems: a logical collection that is
    missing or is not an alias, an alias ahead of the migrations, migrations applied out
    of order.
    """
    migrations = load_migrations(settings)
    with using(settings, store) as st:
        return current_status(st, migrations)


def applied_version(settings: Settings, store: QdrantStore) -> str:
    """The global applied version (``NNNN`` or ``base``); for manifests and the ledger."""
    return current_status(store, load_migrations(settings)).version


# -- bootstrap --------------------------------------------------------------------------------


def bootstrap_collection(store: QdrantStore, collection: str, spec: CollectionSpec) -> str:
    """Create ``<collection>__v1`` and the alias ``collection`` if it does not exist yet.

    Idempotent: an existing alias is left alone (its target is returned); an existing
    ``__v1`` without the alias gets the alias. A physical collection already named
    ``collection`` is a :class:`StateError`: it would have to be copied into ``__v1``.
    """
    aliases = store.aliases()
    if collection in aliases:
        return aliases[collection]
    live = store.collections()
    if collection in live:
        raise StateError(
            f"{collection} is a collection, not an alias: copy it into"
            f" {physical_name(collection, 1)} and alias that as {collection}"
        )
    first = physical_name(collection, 1)
    if first not in live:
        store.create_collection(first, spec)
    store.set_aliases({collection: first})
    return first
