"""Versioned Redis data migrations: Python modules run with resumable, atomic helpers.

Public API (the CLI's ``migrate ... --store redis`` calls these):

- :func:`status` ``(settings) -> RedisStatus``: current version, head, pending, interrupted runs;
- :func:`up` ``(settings, to=None, *, on_step=None, on_progress=None) -> RedisMigrateResult``;
- :func:`down` ``(settings, to, *, on_step=None, on_progress=None) -> RedisMigrateResult``.

Migration modules (``migrations/redis/NNNN_name.py``) either declare ``MOVES``, a list of
:class:`KeyMove` (pattern, old prefix, new prefix, up and down JSON transforms; see
:mod:`.moves`), or define ``up(ctx)`` and ``down(ctx)``, where ``ctx`` is a
:class:`MigrationContext` with the client and the helpers ``rename_keys``,
``transform_json``, ``rename_and_transform`` and ``set_ttl``; :func:`field_map` builds the
usual JSON field-renaming transform. See :mod:`.engine`, :mod:`.versions` and :mod:`.helpers`.

Only ``MOVES`` migrations run in a release's expand/contract form, beside the old version:
:mod:`.phases` (``expand``, ``catch_up``, ``contract``, ``undo``, ``expand_problems``,
``expanded_state``).
"""

from releasegate.migrations.redis.checkpoint import Progress, StepStats
from releasegate.migrations.redis.engine import (
    Direction,
    MigrationContext,
    RedisMigrateResult,
    RedisStepResult,
    down,
    up,
)
from releasegate.migrations.redis.json_fields import camel_to_snake, field_map, snake_to_camel
from releasegate.migrations.redis.moves import KeyMove
from releasegate.migrations.redis.versions import (
    RedisMigration,
    RedisState,
    RedisStatus,
    load_migrations,
    status,
)

__all__ = [
    "Direction",
    "KeyMove",
    "MigrationContext",
    "Progress",
    "RedisMigrateResult",
    "RedisMigration",
    "RedisState",
    "RedisStatus",
    "RedisStepResult",
    "StepStats",
    "camel_to_snake",
    "down",
    "field_map",
    "load_migrations",
    "snake_to_camel",
    "status",
    "up",
]
