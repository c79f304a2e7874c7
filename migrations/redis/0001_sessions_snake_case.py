"""Sessions move from ``sess:{id}`` (camelCase JSON) to ``session:{id}`` (snake_case JSON).

v1: ``sess:{uuid}`` holds ``{"userId", "createdAt", "lastSeen", "userAgent"}``.
v2: ``session:{uuid}`` holds ``{"user_id", "created_at", "last_seen", "user_agent",
"theme"}``; ``theme`` is new and defaults to ``"light"``. Each key keeps its TTL.
``down`` gives back the v1 values exactly (``theme`` dropped). Declared as a key move, it
runs standalone as an atomic rename + transform per key, and in a release in expand form
(v2 keys written beside the v1 keys the old version keeps using).
"""

from __future__ import annotations

from releasegate.migrations.redis import KeyMove, field_map

V1_TO_V2 = {
    "userId": "user_id",
    "createdAt": "created_at",
    "lastSeen": "last_seen",
    "userAgent": "user_agent",
}

to_v2 = field_map(V1_TO_V2, defaults={"theme": "light"})
to_v1 = field_map({new: old for old, new in V1_TO_V2.items()}, drop=("theme",))

MOVES = [KeyMove("sess:*", "sess:", "session:", up=to_v2, down=to_v1)]
