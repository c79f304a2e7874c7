"""What every store's backup module returns and reads: one manifest entry per store.

A backup set is a directory with a ``manifest.json`` (see :mod:`releasegate.backup.manifest`)
and the files each store wrote. Each store module (``postgres``, ``redis``, ``qdrant``)
provides the same four operations on its own terms:

- ``backup(settings, set_dir) -> StoreBackup``: write files into ``set_dir`` and describe them;
- ``restore(settings, set_dir, entry, *, force) -> dict[str, Any]``: put the data back into
  the configured store (refusing a non-empty target unless ``force``), all or nothing,
  returning counts; it is ``stage(...)`` then ``commit()`` of a :class:`StagedRestore`;
- ``required_files(entry) -> list[str]``: the manifest files a restore reads;
- ``verify(settings, set_dir, entry) -> list[Difference]``: restore into a scratch place
  (a scratch database, logical DB or collection), compare with the manifest, clean up;
- ``counts(settings) -> dict[str, Any]``: the live counts, in the manifest's shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from releasegate.errors import CheckFailed

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


class StagedRestore(Protocol):
    """A restore made ready without changing what the service reads (``stage``).

    Exactly one ending follows: :meth:`abort` (before, or after a failed, :meth:`commit`),
    :meth:`undo` (after a commit, when another store failed) or :meth:`finish`. A failed
    :meth:`commit` leaves the store as it was.
    """

    store: str

    def commit(self) -> dict[str, Any]:
        """Make the restored data live; the restore's figures."""
        ...

    def abort(self) -> None:
        """Drop what was staged; the store is as it was."""
        ...

    def undo(self) -> None:
        """Put back what :meth:`commit` replaced (``RollbackFailed`` when it cannot)."""
        ...

    def finish(self) -> None:
        """Drop what was kept for an undo: the restore stands."""
        ...


@dataclass(frozen=True)
class Difference:
    """One way a restored copy differs from what the manifest recorded."""

    store: str
    item: str  # e.g. "table public.users rows", "keys sess:* (hash)", "points documents"
    expected: Any
    actual: Any

    def describe(self) -> str:
        return f"{self.store}: {self.item}: expected {self.expected}, found {self.actual}"


def name_problem(name: str) -> str | None:
    """None when ``name`` is a plain relative path inside a set folder, else why it is not.

    Manifest file names are relative POSIX paths: no absolute path, no ``..`` or ``.``
    component, no empty component, no backslash and no NUL, so that a name cannot point
    outside the set folder by itself (symlinks are checked by :func:`set_file`).
    """
    if not name:
        return "an empty file name"
    if "\\" in name or "\x00" in name:
        return f"file name {name[:80]!r} has a backslash or NUL"
    if name.startswith("/"):
        return f"file name {name[:80]!r} is an absolute path"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"file name {name[:80]!r} leaves or does not name a file of the set folder"
    return None


def set_file(set_dir: Path, name: str) -> Path:
    """The path of the set file ``name``: :class:`CheckFailed` unless it stays in ``set_dir``.

    Both the name (:func:`name_problem`) and where it resolves to are checked: a symlink
    leading out of the set folder is refused, so the file checked is the file restored.
    """
    if (why := name_problem(name)) is not None:
        raise CheckFailed(f"backup set {set_dir.name} is damaged: {why}")
    path = set_dir.joinpath(*PurePosixPath(name).parts)
    root = set_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise CheckFailed(
            f"backup set {set_dir.name} is damaged: {name} is a link that leaves the set folder"
        )
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
