"""Finding a service's Dockerfile and Alembic migrations in its repository.

One walk of the tree, breadth first and at most :data:`MAX_DEPTH` folders deep, never
into hidden folders, virtualenvs, dependencies or build output: ``init`` stays fast in
a large repository.
"""

from __future__ import annotations

import configparser
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from releasegate.errors import ConfigError

MAX_DEPTH = 4
# Folders that never hold the service's own Dockerfile or migrations.
SKIPPED = frozenset(
    {
        "node_modules",
        "venv",
        "env",
        "site-packages",
        "__pycache__",
        "build",
        "dist",
        "wheels",
        "target",
        "vendor",
    }
)


@dataclass
class Found:
    """What one walk found, shallowest first."""

    dockerfiles: list[Path] = field(default_factory=list)
    alembic_inis: list[Path] = field(default_factory=list)
    # Folders with an env.py beside a script.py.mako or a versions/ folder.
    script_dirs: list[Path] = field(default_factory=list)
    folders: int = 0  # how many were read


def scan(root: Path, max_depth: int = MAX_DEPTH) -> Found:
    """Walk ``root`` for Dockerfiles, alembic.ini files and Alembic script folders."""
    found = Found()
    queue: deque[tuple[Path, int]] = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue  # unreadable: not the service's
        found.folders += 1
        files = {e.name for e in entries if e.is_file(follow_symlinks=False)}
        subdirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
        if "Dockerfile" in files:
            found.dockerfiles.append(folder / "Dockerfile")
        if "alembic.ini" in files:
            found.alembic_inis.append(folder / "alembic.ini")
        if "env.py" in files and (
            "script.py.mako" in files or any(e.name == "versions" for e in subdirs)
        ):
            found.script_dirs.append(folder)
        if depth < max_depth:
            queue.extend(
                (Path(e.path), depth + 1)
                for e in subdirs
                if not e.name.startswith(".") and e.name not in SKIPPED
            )
    return found


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with forward slashes ("." for the root itself)."""
    return path.relative_to(root).as_posix() or "."


def choose_dockerfile(root: Path, found: Found, given: Path | None) -> Path:
    """The service's Dockerfile: ``given`` (relative to ``root``), else the one at the root,
    else the only one found; :class:`ConfigError` when there is none or a choice to make."""
    if given is not None:
        path = given if given.is_absolute() else root / given
        if not path.is_file():
            raise ConfigError(f"Dockerfile not found: {path}")
        return path.resolve()
    if (root / "Dockerfile").is_file():
        return root / "Dockerfile"
    if not found.dockerfiles:
        raise ConfigError(
            f"no Dockerfile in {root} (searched {MAX_DEPTH} folders deep): write one, or name"
            " it with --dockerfile"
        )
    if len(found.dockerfiles) > 1:
        names = ", ".join(relative(p, root) for p in found.dockerfiles[:5])
        raise ConfigError(f"several Dockerfiles ({names}): name the service's with --dockerfile")
    return found.dockerfiles[0]


def _script_location(ini: Path) -> Path | None:
    """The folder an alembic.ini names as ``script_location``, when it has an env.py."""
    parser = configparser.ConfigParser(defaults={"here": str(ini.parent)})
    try:
        parser.read(ini, encoding="utf-8")
        value = parser.get("alembic", "script_location")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    if ":" in value and not os.path.isabs(value):
        return None  # a package resource ("package:folder"), not a folder of the repository
    path = Path(value)
    path = (path if path.is_absolute() else ini.parent / path).resolve()
    return path if (path / "env.py").is_file() else None


@dataclass(frozen=True)
class Migrations:
    """An Alembic environment found in the repository."""

    folder: Path  # the script location: env.py and versions/
    alembic_ini: Path | None  # only when it is not the folder's own alembic.ini


def find_migrations(root: Path, found: Found) -> Migrations | None:
    """The Alembic environment of the repository: the first alembic.ini whose
    script_location has an env.py, else the first script folder; None when there is none."""
    for ini in found.alembic_inis:
        folder = _script_location(ini)
        if folder is not None and folder.is_relative_to(root):
            own = ini.parent == folder
            return Migrations(folder, None if own else ini)
    if found.script_dirs:
        return Migrations(found.script_dirs[0], None)
    return None


def shares_connection(env_py: Path) -> bool:
    """Whether env.py reads the connection releasegate hands it (config.attributes)."""
    try:
        text = env_py.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "attributes" in text and "connection" in text
