"""What every store's backup module returns and reads: one manifest entry per store.

A backup set is a directory with a ``manifest.json`` (see :mod:`releasegate.backup.manifest`)
and the files each store wrote. Each store module (``postgres``, ``redis``, ``qdrant``)
provides the same four operations on its own terms:

- ``backup(settings, set_dir) -> StoreBackup``: write files into ``set_dir`` and describe them;
- ``restore(settings, set_dir, entry, *, force) -> dict[str, Any]``: put the data back into
  the configured store (refusing a non-empty target unless ``force``), returning counts;
- ``verify(settings, set_dir, entry) -> list[Difference]``: restore into a scratch place
  (a scratch database, logical DB or collection), compare with the manifest, clean up;
- ``counts(settings) -> dict[str, Any]``: the live counts, in the manifest's shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a backup set, relative to the set directory."""

    name: str
    sha256: str
    size: int

    @classmethod
    def of(cls, set_dir: Path, path: Path) -> FileEntry:
        return cls(path.relative_to(set_dir).as_posix(), sha256_file(path), path.stat().st_size)


@dataclass
class StoreBackup:
    """The manifest entry of one store."""

    store: str  # "postgres" | "redis" | "qdrant"
    method: str  # e.g. "pg_dump custom", "scan+dump", "qdrant snapshot", "qdrant scroll"
    files: list[FileEntry] = field(default_factory=list)
    # Postgres: rows per table; Redis: keys per pattern and per type; Qdrant: points per
    # collection, vector config and the alias map.
    counts: dict[str, Any] = field(default_factory=dict)
    # Versions at backup time: the Alembic revision, the Redis/Qdrant data-migration versions.
    versions: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)  # tool -> version
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    extra: dict[str, Any] = field(default_factory=dict)  # store-specific details

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreBackup:
        files = [FileEntry(**f) for f in data.get("files", [])]
        return cls(**{**data, "files": files})


@dataclass(frozen=True)
class Difference:
    """One way a restored copy differs from what the manifest recorded."""

    store: str
    item: str  # e.g. "table public.users rows", "keys sess:* (hash)", "points documents"
    expected: Any
    actual: Any

    def describe(self) -> str:
        return f"{self.store}: {self.item}: expected {self.expected}, found {self.actual}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
