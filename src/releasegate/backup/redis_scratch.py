"""Scratch places for restoring a Redis backup to check it: an empty logical DB or a prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from releasegate.errors import InfraError
from releasegate.stores import redis as stores

_CLAIM_PREFIX = b"releasegate:verify:"
SCRATCH_TTL_FLOOR_MS = 3_600_000


@dataclass
class ScratchTarget:
    """Where a verification restores: an empty logical DB, or a key prefix in the same DB."""

    client: redis.Redis
    db: int | None
    prefix: bytes
    claim_key: bytes


def _databases(client: redis.Redis) -> int:
    try:
        reply: dict[Any, Any] = client.config_get("databases")
        return int(reply.get(b"databases") or reply.get("databases") or 16)
    except (redis.ResponseError, ValueError):
        return 16  # CONFIG is often disabled on managed Redis; 16 is the default


@contextmanager
def scratch_target(
    url: str, *, source_db: int, timeout: float, purpose: str = "backup verify"
) -> Iterator[ScratchTarget]:
    """Claim an empty logical DB on the server of ``url`` (highest index first), else a key
    prefix in the source DB; yield it; remove everything written there afterwards.

    A DB is claimed with ``SET NX`` of a marker key while it holds nothing else, so two
    verifications never share one. When only DB 0 exists (Redis Cluster, some managed
    offerings) the copy goes under ``releasegate:verify:<token>:`` in the source DB.
    """
    token = uuid.uuid4().hex[:12]
    claim = _CLAIM_PREFIX + f"claim:{token}".encode()
    base = stores.connect(url, purpose=purpose, timeout=timeout)
    chosen: ScratchTarget | None = None
    try:
        for db in range(_databases(base) - 1, 0, -1):
            if db == source_db:
                continue
            try:
                client = stores.connect(url, purpose=purpose, timeout=timeout, db=db)
            except InfraError:
                break  # the server has fewer databases than it said
            if client.dbsize() == 0 and client.set(claim, token, nx=True, ex=86_400):
                if client.dbsize() == 1:
                    chosen = ScratchTarget(client, db, b"", claim)
                    break
                client.delete(claim)
            client.close()
        if chosen is None:
            base.set(claim, token, ex=86_400)
            chosen = ScratchTarget(base, None, _CLAIM_PREFIX + f"{token}:".encode(), claim)
        yield chosen
    finally:
        if chosen is not None:
            _clean_scratch(chosen, token)
            if chosen.client is not base:
                chosen.client.close()
        base.close()


def _clean_scratch(target: ScratchTarget, token: str) -> None:
    client = target.client
    if target.db is not None:
        if client.get(target.claim_key) == token.encode():
            try:
                client.flushdb()
                return
            except redis.ResponseError:
                pass  # FLUSHDB renamed away: delete key by key below
        else:
            return  # someone else emptied or took the DB: nothing of ours is left there
    match = stores.glob_escape(target.prefix.decode()) + "*" if target.prefix else "*"
    for _cursor, page in stores.scan_pages(client, match, 1000):
        if page:
            client.unlink(*page)
    client.delete(target.claim_key)
