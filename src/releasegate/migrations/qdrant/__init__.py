"""Versioned Qdrant migrations: new ``name__vN`` collections swapped in behind an alias.

The modules, by what they do:

- :mod:`~releasegate.migrations.qdrant.loading`: the migration modules, the model, and
  where each logical collection stands (the applied version is the alias map);
- :mod:`~releasegate.migrations.qdrant.context`: what ``up(ctx)`` works with (create, copy,
  verify), :mod:`~releasegate.migrations.qdrant.catchup`: catching a copy up with writes;
- :mod:`~releasegate.migrations.qdrant.engine`: ``migrate up``/``down`` under the release
  lock, recorded in the ledger;
- :mod:`~releasegate.migrations.qdrant.phases`: the expand/switch/contract form a release
  runs in.

The public API:

- :func:`status` ``(settings, *, store=None) -> QdrantStatus``
- :func:`up` ``(settings, to=None, on_step=None, *, store=None) -> QdrantMigrateResult``
- :func:`down` ``(settings, to, on_step=None, *, store=None) -> QdrantMigrateResult``
- :func:`bootstrap_collection` ``(store, collection, spec) -> str``: ``name__v1`` + alias
- :class:`MigrationContext`: what a migration's ``up(ctx)``/``down(ctx)`` receives
- :mod:`~releasegate.migrations.qdrant.phases`: ``expand``, ``switch``, ``contract``,
  ``undo``, ``expand_problems``, ``expanded_state``

Results have ``to_dict()`` for JSON output. Open the store with
:func:`releasegate.stores.qdrant.open_store` when one command calls several of these.
"""

from releasegate.migrations.qdrant.context import MigrationContext, Mode
from releasegate.migrations.qdrant.engine import (
    Direction,
    QdrantMigrateResult,
    QdrantStepResult,
    down,
    up,
)
from releasegate.migrations.qdrant.loading import (
    BASE,
    CollectionState,
    QdrantMigration,
    QdrantStatus,
    VerificationFailed,
    applied_version,
    bootstrap_collection,
    load_migrations,
    parse_physical,
    physical_name,
    status,
)
from releasegate.stores.qdrant import CollectionSpec, PointData

__all__ = [
    "BASE",
    "CollectionSpec",
    "CollectionState",
    "Direction",
    "MigrationContext",
    "Mode",
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
