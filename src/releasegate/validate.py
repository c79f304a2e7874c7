"""Everything a config refers to, checked before anything changes.

``releasegate.toml`` can be valid on its own and still name a smoke file with a typo, a
locustfile that does not import, or a migrations folder that is not there. These
checks find that up front: ``config check`` runs :func:`validate_config`, and a release
(dry run or not) runs :func:`validate_release` before its lock, and again in its plan
step, before the backup.

What is checked:

* the Postgres migrations folder (it has an ``env.py``), and the Redis and Qdrant
  migrations folders of the sections that are present;
* the smoke file: it parses and every check is well-formed;
* the locustfile: it exists, compiles, imports in a child process without sending load,
  defines at least one User class, and the scopes of ``[slo.thresholds]`` (and of the
  watch's thresholds and the comparative gate) are request names it uses (see
  :mod:`releasegate.gates.locustfile`);
* each hook's program: a path (relative to the config's folder) that exists and is
  executable, or a name found on ``PATH``;
* the build context and its Dockerfile (``config check`` only, when ``[build]`` is
  present: a release deploys an image that is already built);
* ``env.py`` runs revisions on the connection releasegate shares with it, so the lock
  and statement timeouts apply (:func:`shared_connection_problem`; a release only, as it
  needs the database).

``config check`` checks the smoke file and the locustfile when the config has a
``[smoke]`` or ``[slo]`` section; a release always does, as it runs both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from releasegate.config import Settings
from releasegate.db import first_line
from releasegate.errors import ConfigError, InfraError
from releasegate.hooks import PYTHON_PLACEHOLDER


def _migration_folders(settings: Settings) -> list[str]:
    problems = []
    pg = settings.migrations_dir
    if not (pg / "env.py").is_file():
        problems.append(
            f"migrations folder not found: {pg} has no env.py (migrations.postgres in the config)"
        )
    raw = settings.raw
    for store, section in (("redis", raw.redis), ("qdrant", raw.qdrant)):
        if section is not None and not settings.resolve_path(section.migrations).is_dir():
            folder = settings.resolve_path(section.migrations)
            problems.append(
                f"{store} migrations folder not found: {folder} ({store}.migrations in the config)"
            )
    return problems


def _smoke_file(settings: Settings) -> list[str]:
    from releasegate.gates.smoke import load_smoke_file

    try:
        load_smoke_file(settings.resolve_path(settings.raw.smoke.file))
    except ConfigError as exc:
        return [f"smoke.file: {exc}"]
    return []


def _threshold_scopes(settings: Settings) -> list[str]:
    slo = settings.raw.slo
    scopes = [*slo.thresholds, *(settings.raw.release.watch_thresholds or {})]
    if slo.compare.enabled:
        scopes += slo.compare.scopes
    return scopes


def locustfile_problems(settings: Settings) -> list[str]:
    """The locustfile exists, imports, defines a User and names the threshold scopes."""
    from releasegate.gates.locust_runner import check_locustfile, child_env
    from releasegate.gates.locustfile import probe_user_classes, request_names, unknown_scopes

    path = settings.resolve_path(settings.raw.slo.locustfile)
    try:
        check_locustfile(path)
    except ConfigError as exc:
        return [f"slo.locustfile: {exc}"]
    try:
        users = probe_user_classes(path, child_env())
    except ValueError as exc:
        return [f"slo.locustfile {path.name}: {exc}"]
    if not users:
        return [f"slo.locustfile {path.name} defines no User class (e.g. a FastHttpUser)"]
    names = request_names(path.read_text(encoding="utf-8"))
    return [
        f"slo.thresholds: scope {scope!r} names no request of {path.name}"
        " (a request's name= or path; 'total' covers every request)"
        for scope in unknown_scopes(_threshold_scopes(settings), names)
    ]


def _hook_programs(settings: Settings) -> list[str]:
    problems = []
    hooks = settings.raw.hooks
    for key, command in (("after_gate", hooks.after_gate), ("after_watch", hooks.after_watch)):
        if command is None:
            continue
        program = command[0]
        if program == PYTHON_PLACEHOLDER:
            continue
        if "/" in program:
            path = settings.resolve_path(Path(program))
            if not path.is_file() or not os.access(path, os.X_OK):
                problems.append(f"hooks.{key}: {program} is not an executable file")
        elif shutil.which(program, path=settings.env.get("PATH")) is None:
            problems.append(f"hooks.{key}: program {program!r} not found on PATH")
    return problems


def _build_paths(settings: Settings) -> list[str]:
    build = settings.raw.build
    context = settings.resolve_path(build.context)
    if not context.is_dir():
        return [f"build.context: folder not found: {context}"]
    if not (context / build.dockerfile).is_file():
        return [f"build.dockerfile: {build.dockerfile} not found in {context}"]
    return []


def validate_config(settings: Settings, *, release: bool = False) -> list[str]:
    """Problems with what the config refers to, one line each; empty when all is well.

    ``release``: check what a release uses (smoke file and locustfile always, not the
    build). Otherwise (``config check``): the smoke file and locustfile when their
    section is present, the build when ``[build]`` is.
    """
    present = settings.raw.model_fields_set
    problems = _migration_folders(settings)
    if release or "smoke" in present:
        problems += _smoke_file(settings)
    if release or "slo" in present:
        problems += locustfile_problems(settings)
    problems += _hook_programs(settings)
    if not release and "build" in present:
        problems += _build_paths(settings)
    return problems


def shared_connection_problem(settings: Settings) -> str | None:
    """Why ``env.py`` would not run revisions on releasegate's connection, or None.

    Connects to the configured database and runs ``env.py`` once with nothing to do
    (see :meth:`AlembicProject.require_shared_connection`); changes nothing.
    """
    from releasegate.migrations.project import AlembicProject, sqlalchemy_connection

    try:
        project = AlembicProject(settings)
        with sqlalchemy_connection(
            settings.postgres_url(),
            "validate",
            connect_timeout=settings.raw.postgres.connect_timeout,
        ) as conn:
            project.require_shared_connection(conn)
    except ConfigError as exc:
        return str(exc)
    except InfraError:
        raise
    except Exception as exc:  # env.py is the service's own code
        return f"env.py fails when run with nothing to do: {type(exc).__name__}: {first_line(exc)}"
    return None


def require_valid(settings: Settings, *, release: bool = False) -> None:
    """:func:`validate_config` (and, for a release, the ``env.py`` check) as one error.

    Raises :class:`ConfigError` (exit 2) naming every problem on one line.
    """
    problems = validate_config(settings, release=release)
    if release and not problems and (problem := shared_connection_problem(settings)):
        problems.append(problem)
    if problems:
        raise ConfigError("; ".join(problems))
