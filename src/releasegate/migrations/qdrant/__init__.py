"""Versioned Qdrant migrations: new ``name__vN`` collections swapped in behind an alias.

The public API (see :mod:`releasegate.migrations.qdrant.engine` for the model, where the
applied version lives, and what the ledger records):

- :func:`status` ``(settings, *, store=None) -> QdrantStatus``
- :func:`up` ``(settings, to=None, on_step=None, *, store=None) -> QdrantMigrateResult``
- :func:`down` ``(settings, to, on_step=None, *, store=None) -> QdrantMigrateResult``
- :func:`bootstrap_collection` ``(store, collection, spec) -> str``: ``name__v1`` + alias
- :class:`MigrationContext`: what a migration's ``up(ctx)``/``down(ctx)`` receives

Results have ``to_dict()`` for JSON output. Open the store with
:func:`releasegate.stores.qdrant.open_store` when one command calls several of these.
"""

from releasegate.migrations.qdrant.engine import (
    BASE,
    CollectionState,
    Direction,
    MigrationContext,
    QdrantMigrateResult,
    QdrantMigration,
    QdrantStatus,
    QdrantStepResult,
    VerificationFailed,
    applied_version,
    bootstrap_collection,
    down,
    load_migrations,
    parse_physical,
    physical_name,
    status,
    up,
)
from releasegate.stores.qdrant import CollectionSpec, PointData

__all__ = [
    "BASE",
    "CollectionSpec",
    "CollectionState",
    "Direction",
    "MigrationContext",
    "PointData",
    "QdrantMigrateResult",
    "QdrantMigration",
    "QdrantStatus",
    "QdrantStepResult",
    "VerificationFailed",
    "applied_version",
    "bootstrap_collection",
    "down",
    "load_migrations",
    "parse_physical",
    "physical_name",
    "status",
    "up",
]
