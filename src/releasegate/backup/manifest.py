"""The ``manifest.json`` of a backup set: what was backed up, from where, and how to check it.

A backup set is the folder ``<backup.dir>/<set id>/`` holding each store's files and this
manifest, which is written last and atomically (temporary file, ``fsync``, rename): a set
with a manifest is complete. Example (abridged)::

    {
      "format_version": 1,
      "set_id": "20260315T101500.123Z",
      "service": "notes",
      "created_at": "2026-03-15T10:15:00.123456+00:00",
      "performer": "ci@runner",
      "git_sha": "3f2a...",
      "releasegate_version": "0.1.0",
      "versions": {"alembic": "0006", "redis": "0001", "qdrant": "0001"},
      "stores": [
        {"store": "postgres", "method": "pg_dump custom",
         "files": [{"name": "postgres.dump", "sha256": "9b1c...", "size": 48213}],
         "counts": {"tables": {"public.users": 5000, ...}, "rows": 20001},
         "versions": {"alembic": "0006"},
         "tools": {"pg_dump": "15.18", "postgres": "15.18"},
         "timings": {"dump": 1.2, "counts": 0.1, "schema": 0.1, "checksums": 0.01},
         "extra": {"database": "127.0.0.1:5432/notes", "format": "custom", "schema": {...}}},
        {"store": "redis", ...}, {"store": "qdrant", ...}
      ],
      "timings": {"postgres": 1.4, "redis": 0.2, "qdrant": 0.3, "total": 2.0},
      "ledger_release_id": 42
    }

``format_version`` grows when the layout changes incompatibly; a releasegate that meets a
newer one refuses with a plain message instead of misreading it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from releasegate.backup.base import FileEntry, StoreBackup, name_problem
from releasegate.errors import CheckFailed, ConfigError
from releasegate.fileio import write_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SET_ID_RE = re.compile(r"^\d{8}T\d{6}\.\d{3}Z$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
STORE_ORDER = ("postgres", "redis", "qdrant")


def new_set_id(now: datetime | None = None) -> str:
    """A set id from the time: ``20260315T101500.123Z`` (UTC); ids sort by age."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y%m%dT%H%M%S.") + f"{moment.microsecond // 1000:03d}Z"


def is_set_id(name: str) -> bool:
    return bool(SET_ID_RE.match(name))


@dataclass
class Manifest:
    """Everything a backup set records about itself (see the module docstring)."""

    set_id: str
    service: str
    created_at: str
    performer: str
    git_sha: str | None
    releasegate_version: str
    # The Alembic revision and the Redis/Qdrant data-migration versions at backup time.
    versions: dict[str, str | None] = field(default_factory=dict)
    stores: list[StoreBackup] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    ledger_release_id: int | None = None
    format_version: int = FORMAT_VERSION

    def store(self, name: str) -> StoreBackup | None:
        """The entry of one store, or None when the set does not hold it."""
        return next((s for s in self.stores if s.store == name), None)

    @property
    def store_names(self) -> list[str]:
        return [s.store for s in self.stores]

    @property
    def files(self) -> list[FileEntry]:
        return [f for s in self.stores for f in s.files]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "set_id": self.set_id,
            "service": self.service,
            "created_at": self.created_at,
            "performer": self.performer,
            "git_sha": self.git_sha,
            "releasegate_version": self.releasegate_version,
            "versions": dict(self.versions),
            "stores": [s.to_dict() for s in self.stores],
            "timings": dict(self.timings),
            "ledger_release_id": self.ledger_release_id,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_NAME) -> Manifest:
        """Rebuild a manifest; a newer format is a :class:`ConfigError`, damage a
        :class:`CheckFailed`."""
        if not isinstance(data, dict):
            raise CheckFailed(f"{source} is damaged: not a JSON object")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckFailed(f"{source} is damaged: no valid format_version")
        if version > FORMAT_VERSION:
            raise ConfigError(
                f"manifest format {version} is newer than this releasegate supports"
                f" ({FORMAT_VERSION}): upgrade releasegate"
            )
        if (problem := shape_problem(data)) is not None:
            raise CheckFailed(f"{source} is damaged: {problem}")
        try:
            return cls(
                set_id=str(data["set_id"]),
                service=str(data["service"]),
                created_at=str(data["created_at"]),
                performer=str(data["performer"]),
                git_sha=data.get("git_sha"),
                releasegate_version=str(data["releasegate_version"]),
                versions=dict(data.get("versions") or {}),
                stores=[StoreBackup.from_dict(s) for s in data["stores"]],
                timings=dict(data.get("timings") or {}),
                ledger_release_id=data.get("ledger_release_id"),
                format_version=version,
            )
        except KeyError as exc:
            raise CheckFailed(f"{source} is damaged: missing {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CheckFailed(f"{source} is damaged: {exc}") from None

    def write(self, set_dir: Path) -> Path:
        """Write ``set_dir/manifest.json`` atomically (temporary file, fsync, rename)."""
        path = set_dir / MANIFEST_NAME
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str) + "\n"
        write_atomic(path, text)
        return path

    @classmethod
    def read(cls, set_dir: Path) -> Manifest:
        """Read ``set_dir/manifest.json``; a folder without one is not a backup set."""
        path = set_dir / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{set_dir} is not a backup set: it has no {MANIFEST_NAME}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckFailed(f"cannot read {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckFailed(
                f"{MANIFEST_NAME} of backup set {set_dir.name} is damaged: {exc.msg}"
                f" at line {exc.lineno}"
            ) from None
        return cls.from_dict(data, f"{MANIFEST_NAME} of backup set {set_dir.name}")


# -- the shape of a manifest ----------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and _is_int(v) for k, v in value.items()
    )


def _file_problem(where: str, item: Any) -> str | None:
    if not isinstance(item, dict) or set(item) != {"name", "sha256", "size"}:
        return f"{where} is not an object with name, sha256 and size"
    if not isinstance(item["name"], str):
        return f"{where}: the name is not a string"
    if (why := name_problem(item["name"])) is not None:
        return f"{where}: {why}"
    if not isinstance(item["sha256"], str) or not SHA256_RE.match(item["sha256"]):
        return f"{where}: sha256 is not 64 lowercase hex digits"
    if not _is_int(item["size"]) or item["size"] < 0:
        return f"{where}: size is not a byte count"
    return None


def _counts_problem(store: str, counts: dict[str, Any]) -> str | None:
    """The figures a restore or its loss report reads must have their documented types."""
    if store == "postgres":
        if not _int_map(counts.get("tables", {})):
            return "counts.tables is not a map of table -> rows"
    elif store == "redis":
        if not _is_int(counts.get("keys", 0)):
            return "counts.keys is not a number"
        patterns = counts.get("patterns", {})
        if not isinstance(patterns, dict) or not all(
            isinstance(t, dict) and _is_int(t.get("keys", 0)) for t in patterns.values()
        ):
            return "counts.patterns is not a map of pattern -> counts"
    elif store == "qdrant":
        collections = counts.get("collections", {})
        if not isinstance(collections, dict) or not all(
            isinstance(c, dict) and _is_int(c.get("points", 0)) for c in collections.values()
        ):
            return "counts.collections is not a map of collection -> counts"
        aliases = counts.get("aliases", {})
        if not isinstance(aliases, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
        ):
            return "counts.aliases is not a map of alias -> collection"
    return None


def _store_problem(index: int, entry: Any, seen: set[str]) -> str | None:
    where = f"stores[{index}]"
    if not isinstance(entry, dict):
        return f"{where} is not an object"
    store = entry.get("store")
    if store not in STORE_ORDER:
        return f"{where}.store is not one of {', '.join(STORE_ORDER)}"
    if store in seen:
        return f"{store} is listed twice"
    seen.add(store)
    if not isinstance(entry.get("method"), str):
        return f"{store}.method is not a string"
    for name in ("counts", "versions", "tools", "timings", "extra"):
        if not isinstance(entry.get(name, {}), dict):
            return f"{store}.{name} is not an object"
    files = entry.get("files", [])
    if not isinstance(files, list):
        return f"{store}.files is not a list"
    names: set[str] = set()
    for n, item in enumerate(files):
        if (why := _file_problem(f"{store}.files[{n}]", item)) is not None:
            return why
        if item["name"] in names:
            return f"{store}.files lists {item['name']} twice"
        names.add(item["name"])
    return _counts_problem(store, entry.get("counts", {}))


def shape_problem(data: dict[str, Any]) -> str | None:
    """None when a manifest's fields have the documented types, else the first that does not.

    Checked before anything is built from the manifest, so that a damaged one is reported
    as damaged rather than failing somewhere inside a restore.
    """
    stores = data.get("stores")
    if not isinstance(stores, list):
        return "stores is not a list"
    for name in ("versions", "timings"):
        if not isinstance(data.get(name) or {}, dict):
            return f"{name} is not an object"
    if not isinstance(data.get("git_sha"), str | None):
        return "git_sha is not a string"
    ledger_id = data.get("ledger_release_id")
    if ledger_id is not None and not _is_int(ledger_id):
        return "ledger_release_id is not a number"
    seen: set[str] = set()
    for index, entry in enumerate(stores):
        if (why := _store_problem(index, entry, seen)) is not None:
            return why
    return None
