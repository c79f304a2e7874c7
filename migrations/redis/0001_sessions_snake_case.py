"""Sessions move from ``sess:{id}`` (camelCase JSON) to ``session:{id}`` (snake_case JSON).

v1: ``sess:{uuid}`` holds ``{"userId", "createdAt", "lastSeen", "userAgent"}``.
v2: ``session:{uuid}`` holds ``{"user_id", "created_at", "last_seen", "user_agent",
"theme"}``; ``theme`` is new and defaults to ``"light"``. Each key keeps its TTL.
``down`` moves the keys back and drops ``theme``, giving back the v1 values exactly.
"""

from __future__ import annotations

from typing import Any

from releasegate.migrations.redis import field_map

V1_TO_V2 = {
    "userId": "user_id",
    "createdAt": "created_at",
    "lastSeen": "last_seen",
    "userAgent": "user_agent",
}

to_v2 = field_map(V1_TO_V2, defaults={"theme": "light"})
to_v1 = field_map({new: old for old, new in V1_TO_V2.items()}, drop=("theme",))


def up(ctx: Any) -> None:
    ctx.rename_and_transform("sess:*", "sess:", "session:", to_v2)


def down(ctx: Any) -> None:
    ctx.rename_and_transform("session:*", "session:", "sess:", to_v1)
