"""Deterministic Redis data of the notes service, v1 layout, for tests and benchmarks.

- ``sess:{uuid}``: a session, JSON ``{"userId", "createdAt", "lastSeen", "userAgent"}``
  (compact, camelCase), with a TTL of 1 to 24 hours;
- ``cache:doc:{id}``: a rendered document, a plain string, half of them with a TTL.

The same ``seed`` always gives the same keys and values: :func:`iter_sessions` regenerates
them, so a test can check every value after a migration without keeping a copy.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0",
    "notes-cli/1.4",
]
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def iter_sessions(n: int, *, seed: int = 0) -> Iterator[tuple[str, dict[str, Any], int]]:
    """``(uuid, v1 value, ttl seconds)`` for sessions ``0..n-1`` of ``seed``."""
    rng = random.Random(seed)
    for _ in range(n):
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        created = EPOCH + timedelta(seconds=rng.randrange(0, 180 * 86400))
        last_seen = created + timedelta(seconds=rng.randrange(0, 86400))
        value = {
            "userId": rng.randrange(1, 1_000_000),
            "createdAt": created.isoformat(),
            "lastSeen": last_seen.isoformat(),
            "userAgent": USER_AGENTS[rng.randrange(len(USER_AGENTS))],
        }
        yield sid, value, rng.randrange(3600, 24 * 3600 + 1)


def encode(value: dict[str, Any]) -> bytes:
    """The stored form of a JSON value: compact, as the service writes it."""
    return json.dumps(value, separators=(",", ":")).encode()


def seed_sessions(
    client: redis.Redis,
    n: int,
    *,
    seed: int = 0,
    cache_docs: int | None = None,
    batch: int = 5000,
) -> dict[str, int]:
    """Write ``n`` v1 sessions and ``cache_docs`` (default ``n // 4``) cache entries.

    Returns the number of keys written by kind. Pipelined in batches of ``batch``.
    """
    docs = n // 4 if cache_docs is None else cache_docs
    pipe = client.pipeline(transaction=False)
    pending = 0
    for sid, value, ttl in iter_sessions(n, seed=seed):
        pipe.set(f"sess:{sid}", encode(value), ex=ttl)
        pending += 1
        if pending >= batch:
            pipe.execute()
            pending = 0
    rng = random.Random(seed + 1)
    for doc_id in range(1, docs + 1):
        body = f"<h1>Note {doc_id}</h1><p>{'lorem ipsum ' * rng.randrange(1, 8)}</p>"
        pipe.set(f"cache:doc:{doc_id}", body, ex=rng.randrange(600, 7200) if doc_id % 2 else None)
        pending += 1
        if pending >= batch:
            pipe.execute()
            pending = 0
    pipe.execute()
    return {"sessions": n, "cache_docs": docs}
