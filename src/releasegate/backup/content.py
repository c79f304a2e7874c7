"""Content comparisons of the live stores against a backup set: what was kept, changed,
lost or added, item by item.

Counts alone prove nothing: a table can hold as many rows as before and none of the same.
These functions compare each row, key and point of a backup set with the live store:

- :func:`compare_postgres`: by primary key, against the row digests that the backup took
  in the dump's own snapshot (``postgres.rows.gz``, :mod:`.content_postgres`);
- :func:`compare_redis`: against the keys of the set's dump file, by value (logically:
  two encodings of the same hash are equal), expired keys and ``redis.volatile_patterns``
  aside (:mod:`.content_redis`);
- :func:`compare_qdrant`: against the set's points export, payload equal and vectors
  within float tolerance (:mod:`.content_qdrant`);

each returning a :class:`ContentDiff` (see :mod:`.content_diff` for the categories).
A rollback passes when :attr:`ContentDiff.preserved`: nothing changed or missing, added
items allowed. Before a restore, the ``added`` items are what the restore would lose.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from releasegate.backup.base import StoreBackup
from releasegate.backup.content_diff import ContentDiff, ScopeDiff, describe
from releasegate.backup.content_postgres import (
    compare_postgres,
    fingerprint_file,
    take_postgres_fingerprints,
)
from releasegate.config import Settings

if TYPE_CHECKING:
    from releasegate.stores.qdrant import QdrantStore

__all__ = [
    "ContentDiff",
    "ScopeDiff",
    "compare_postgres",
    "compare_qdrant",
    "compare_redis",
    "describe",
    "fingerprint_file",
    "take_postgres_fingerprints",
]


def compare_redis(settings: Settings, set_dir: Path, entry: StoreBackup) -> ContentDiff:
    """Compare the live Redis with the set's dump file, key by key (see
    :func:`releasegate.backup.content_redis.compare_redis`)."""
    from releasegate.backup.content_redis import compare_redis as compare

    return compare(settings, set_dir, entry)


def compare_qdrant(
    settings: Settings, set_dir: Path, entry: StoreBackup, *, store: QdrantStore | None = None
) -> ContentDiff:
    """Compare the live Qdrant with the set's points export, point by point (see
    :func:`releasegate.backup.content_qdrant.compare_qdrant`). ``store``: an open
    store to use (an embedded storage folder admits one client at a time)."""
    from releasegate.backup.content_qdrant import compare_qdrant as compare

    return compare(settings, set_dir, entry, store=store)
