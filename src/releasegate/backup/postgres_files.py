"""The Postgres files of a backup set: the dump file or folder, and which a restore reads."""

from __future__ import annotations

from pathlib import Path

from releasegate.backup.base import StoreBackup, set_file
from releasegate.errors import CheckFailed

STORE = "postgres"
DUMP_FILE = "postgres.dump"  # custom format
DUMP_DIR = "postgres"  # directory format


def _dump_format(entry: StoreBackup) -> str:
    fmt = entry.extra.get("format") or ("directory" if "directory" in entry.method else "custom")
    return "directory" if fmt == "directory" else "custom"


def required_files(entry: StoreBackup) -> list[str]:
    """The manifest file names a restore of ``entry`` reads: ``postgres.dump``, or the
    ``toc.dat`` and data files of ``postgres/`` (all listed ones) in directory format."""
    if _dump_format(entry) == "custom":
        return [DUMP_FILE]
    listed = [f.name for f in entry.files if f.name.startswith(f"{DUMP_DIR}/")]
    return list(dict.fromkeys([f"{DUMP_DIR}/toc.dat", *listed]))


def dump_source(set_dir: Path, entry: StoreBackup) -> Path:
    """The dump file (custom) or folder (directory format) of a Postgres entry.

    Only files the manifest lists (and so were checksummed) may be read: a missing entry,
    a file outside the set folder or, in directory format, an unlisted file in the dump
    folder is :class:`CheckFailed`.
    """
    listed = {f.name for f in entry.files}
    for name in required_files(entry):
        if name not in listed:
            raise CheckFailed(
                f"backup set {set_dir.name} is damaged: the manifest lists no file {name}"
            )
    if _dump_format(entry) == "custom":
        path = set_file(set_dir, DUMP_FILE)
    else:
        path = set_file(set_dir, DUMP_DIR)
        extra = sorted(
            name
            for p in path.rglob("*")
            if not p.is_dir() and (name := p.relative_to(set_dir).as_posix()) not in listed
        )
        if extra:
            raise CheckFailed(
                f"backup set {set_dir.name} is damaged: {extra[0]} is in the dump folder"
                " but not in the manifest"
            )
    if not path.exists():
        raise CheckFailed(f"postgres dump {path.name} is missing from backup set {set_dir.name}")
    return path
