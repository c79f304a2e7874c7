"""What the Redis benchmarks share: the sessions config, the hand-written transform, CPU."""

from __future__ import annotations

from typing import Any

import redis

# A config with the example's Redis migrations ({migrations}) and a batch size.
CONFIG = """
[service]
name = "notes-bench"

[postgres]
url_env = "NOTES_DATABASE_URL"

[redis]
url_env = "NOTES_REDIS_URL"
patterns = ["sess:*", "session:*"]
migrations = "{migrations}"
batch_size = {batch_size}
"""


def server_cpu_seconds(client: redis.Redis) -> float:
    """CPU time the redis-server has used (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def session_v2(value: dict[str, Any]) -> dict[str, Any]:
    """A v1 session as v2 reads it, written out by hand as the naive loops do."""
    return {
        "user_id": value["userId"],
        "created_at": value["createdAt"],
        "last_seen": value["lastSeen"],
        "user_agent": value["userAgent"],
        "theme": "light",
    }
