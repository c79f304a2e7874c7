"""What every backup destination offers, and the default one: the backup folder itself."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from releasegate.backup.manifest import MANIFEST_NAME, Manifest, is_set_id
from releasegate.errors import ConfigError


class Destination(Protocol):
    """The durable copy of backup sets, addressed by set id."""

    def check(self) -> None:
        """Raise :class:`InfraError` unless the destination answers and can be used."""

    def put_set(self, local_dir: Path, set_id: str) -> None:
        """Copy the complete set folder ``local_dir`` in, its manifest last."""

    def get_set(self, set_id: str, into_dir: Path) -> None:
        """Copy the set's files into the (empty) folder ``into_dir``, unchecked."""

    def list_sets(self) -> list[str]:
        """The ids of the complete sets (those with a manifest), newest first."""

    def read_manifest(self, set_id: str) -> Manifest:
        """The manifest of one set."""

    def delete_set(self, set_id: str) -> None:
        """Remove a set, its manifest first."""

    def describe(self) -> str:
        """Where the sets are, for messages: never a secret."""


def set_dirs(root: Path) -> list[Path]:
    """The folders in ``root`` named like a set id, newest first (with a manifest or not)."""
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and is_set_id(p.name)),
        key=lambda p: p.name,
        reverse=True,
    )


class LocalFolder:
    """The backup folder itself: sets are created in place, so nothing is ever copied."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        return None

    def put_set(self, local_dir: Path, set_id: str) -> None:
        target = self.root / set_id
        if local_dir.resolve() == target.resolve():
            return
        shutil.copytree(local_dir, target)

    def get_set(self, set_id: str, into_dir: Path) -> None:
        source = self.root / set_id
        if not (source / MANIFEST_NAME).is_file():
            raise ConfigError(f"no backup set {set_id} in {self.root}")
        shutil.copytree(source, into_dir, dirs_exist_ok=True, symlinks=True)

    def list_sets(self) -> list[str]:
        return [p.name for p in set_dirs(self.root) if (p / MANIFEST_NAME).is_file()]

    def read_manifest(self, set_id: str) -> Manifest:
        return Manifest.read(self.root / set_id)

    def delete_set(self, set_id: str) -> None:
        target = self.root / set_id
        (target / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)

    def describe(self) -> str:
        return str(self.root)
