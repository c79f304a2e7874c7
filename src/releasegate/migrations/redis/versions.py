"""The Redis migrations folder and where a Redis stands against it: version and status.

A migration is a module ``NNNN_name.py`` of the ``redis.migrations`` folder
(:func:`load_migrations`). The version reached is kept in Redis under
``redis.version_key`` (``"0001"``; absent = base); :func:`status` compares it with the
folder and reports interrupted runs and an open expansion.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from releasegate.config import RedisSection, Settings
from releasegate.errors import ConfigError, MigrationScriptError
from releasegate.migrations.loader import load_module
from releasegate.migrations.redis.checkpoint import Checkpoint, progress_of
from releasegate.migrations.redis.moves import KeyMove, moves_of, read_expansion
from releasegate.stores import redis as stores

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.py$")
BASE = "base"


class RedisState(StrEnum):
    NEVER_MIGRATED = "never_migrated"
    UP_TO_DATE = "up_to_date"
    PENDING = "pending"
    UNKNOWN_VERSION = "unknown_version"
    CONTRACT_PENDING = "contract_pending"  # expanded by a release: the old layout is kept


# -- the migrations folder ------------------------------------------------------------------


@dataclass(frozen=True)
class RedisMigration:
    """One migration module."""

    version: str  # "0001"
    name: str  # "sessions_snake_case"
    path: Path
    doc: str  # first line of the docstring
    module: ModuleType = field(repr=False, compare=False)
    moves: list[KeyMove] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "doc": self.doc}


def migrations_dir(settings: Settings) -> Path:
    return settings.resolve_path(section_of(settings).migrations)


def load_migrations(folder: Path, python_path: list[Path] | None = None) -> list[RedisMigration]:
    """The migrations of ``folder`` in version order; :class:`MigrationScriptError` on a bad one.

    Files that do not start with a digit are ignored (helpers, ``__init__.py``); a file that
    does must be named ``NNNN_name.py``, load, have a docstring and declare ``MOVES`` (see
    :mod:`.moves`) or define ``up`` and ``down``.
    """
    if not folder.is_dir():
        raise MigrationScriptError(
            f"redis migrations folder not found: {folder.name} (redis.migrations in the config)"
        )
    for extra in python_path or []:
        if str(extra) not in sys.path:
            sys.path.insert(0, str(extra))
    found: dict[str, RedisMigration] = {}
    for path in sorted(folder.iterdir()):
        if not path.name[:1].isdigit() or path.suffix != ".py":
            continue
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationScriptError(
                f"redis migration {path.name}: name it NNNN_name.py (four digits, lower case)"
            )
        version, name = match.groups()
        if version in found:
            first = found[version].path.name
            raise MigrationScriptError(
                f"redis migrations {first} and {path.name} share version {version}"
            )
        module = _import(path, version)
        doc = (module.__doc__ or "").strip()
        if not doc:
            raise MigrationScriptError(f"redis migration {path.name} has no docstring")
        moves = moves_of(module, path.name)
        for fn in ("up", "down") if moves is None else ():
            if not callable(getattr(module, fn, None)):
                raise MigrationScriptError(
                    f"redis migration {path.name} defines neither MOVES nor {fn}(ctx)"
                )
        found[version] = RedisMigration(version, name, path, doc.splitlines()[0], module, moves)
    if "0000" in found:
        raise MigrationScriptError("redis migration version 0000 is reserved for the base")
    return [found[v] for v in sorted(found)]


def _import(path: Path, version: str) -> ModuleType:
    module_name = f"releasegate_redis_migration_{version}_{abs(hash(str(path)))}"
    return load_module(path, module_name, "redis migration")


def load_all(settings: Settings) -> list[RedisMigration]:
    return load_migrations(migrations_dir(settings), [settings.root, *settings.python_path])


# -- status -------------------------------------------------------------------------------


def format_version(version: str | None) -> str:
    return version if version else BASE


@dataclass(frozen=True)
class RedisStatus:
    """Where a Redis stands against the migrations folder."""

    target: str
    current: str | None  # None: base (never migrated, or migrated all the way down)
    head: str | None
    pending: list[RedisMigration]
    state: RedisState
    problems: list[str]
    interrupted: dict[str, Any]  # "<version>:<direction>" -> checkpoint progress
    expansion: dict[str, Any] | None = None  # the open expansion (see .phases), if any

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "current": format_version(self.current),
            "head": format_version(self.head),
            "state": str(self.state),
            "pending": [m.to_dict() for m in self.pending],
            "problems": self.problems,
            "interrupted": self.interrupted,
            "expansion": self.expansion,
        }


def section_of(settings: Settings) -> RedisSection:
    if settings.raw.redis is None:
        raise ConfigError(f"{settings.path.name} has no [redis] section")
    return settings.raw.redis


def connect(settings: Settings, purpose: str) -> redis.Redis:
    section = section_of(settings)
    return stores.connect(
        settings.redis_url(),
        purpose=purpose,
        timeout=section.connect_timeout,
        source=f"${section.url_env}",
    )


def read_version(client: redis.Redis, version_key: str) -> str | None:
    """The version stored in Redis; None when absent."""
    value = client.get(version_key)
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    return None if text in ("", "0000", BASE) else text


def _interrupted(client: redis.Redis, version_key: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in client.scan_iter(
        match=stores.glob_escape(version_key) + ":checkpoint:*", count=1000
    ):
        name = bytes(key).decode().rsplit(":checkpoint:", 1)[1]
        found[name] = progress_of(Checkpoint(client, bytes(key).decode(), "").fields)
    return found


def unknown_problem(current: str) -> str:
    return (
        f"Redis is at data version {current}, which these migrations do not know: it is"
        " ahead of the code. Deploy the code that has it, or migrate down with that code first"
    )


def status(settings: Settings) -> RedisStatus:
    """Current version, head, pending migrations, interrupted runs and any problems."""
    section = section_of(settings)
    migrations = load_all(settings)
    client = connect(settings, "migrate status")
    try:
        current = read_version(client, section.version_key)
        interrupted = _interrupted(client, section.version_key)
        expansion = read_expansion(client, section.version_key)
    except redis.RedisError as exc:
        raise stores.infra_error(client, exc, "reading the data version") from None
    finally:
        client.close()
    target = stores.describe_target(settings.redis_url())
    head = migrations[-1].version if migrations else None
    known = {m.version for m in migrations}
    problems: list[str] = []
    if current is not None and current not in known:
        problems.append(unknown_problem(current))
        return RedisStatus(
            target, current, head, [], RedisState.UNKNOWN_VERSION, problems, interrupted
        )
    pending = [m for m in migrations if current is None or m.version > current]
    if current is None and pending:
        state = RedisState.NEVER_MIGRATED
    else:
        state = RedisState.PENDING if pending else RedisState.UP_TO_DATE
    opened: dict[str, Any] | None = None
    if expansion is not None:
        opened = expansion.to_dict()
        opened["note"] = (
            f"{expansion.after} {expansion.state} from {format_version(expansion.before)}:"
            " the old layout is kept beside the new one; contract pending (release"
            " finalize) or undo"
        )
        if not pending:
            state = RedisState.CONTRACT_PENDING
    return RedisStatus(target, current, head, pending, state, problems, interrupted, opened)
