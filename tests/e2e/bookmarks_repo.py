"""The bookmarks example as a git repository of its own, at a stage of its history.

:func:`make_bookmarks_repo` copies ``examples/bookmarks`` into a new git repository and
commits it as one stage; :func:`advance` commits the next stage on top. The stages are
those of the example's README:

- ``v1``: ``BOOKMARKS_VARIANT=v1``, migration 0001 only, models with ``note`` (the
  schema at 0001);
- ``v2``: ``BOOKMARKS_VARIANT=v2``, migrations 0001-0003, models at 0003 (the example
  as it is);
- ``v3-bad``: v2's migrations and models with ``BOOKMARKS_VARIANT=v3-bad``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = REPO_ROOT / "examples" / "bookmarks"

Stage = Literal["v1", "v2", "v3-bad"]
STAGES: tuple[Stage, ...] = ("v1", "v2", "v3-bad")

VERSIONS = Path("migrations/postgres/versions")
DOCKERFILE = Path("app/Dockerfile")
MODELS = Path("app/bookmarks_app/models.py")
# Revisions the v2 commit adds to v1's chain.
V2_REVISIONS = ("0002_bookmarks_description_expand.py", "0003_drop_bookmarks_note_contract.py")
_VARIANT_ARG = re.compile(r"^ARG BOOKMARKS_VARIANT=.*$", re.MULTILINE)
# models.py describes the head; at v1 (head 0001) the table has note, not description.
_HEAD_TEXT_COLUMN = 'sa.Column("description", sa.Text, nullable=True),'
_V1_TEXT_COLUMN = 'sa.Column("note", sa.Text, nullable=True),'
# A commit identity of the tests' own: the host's git config is not needed or read.
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "releasegate tests",
    "GIT_AUTHOR_EMAIL": "tests@releasegate.invalid",
    "GIT_COMMITTER_NAME": "releasegate tests",
    "GIT_COMMITTER_EMAIL": "tests@releasegate.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def _git_env() -> dict[str, str]:
    # No GIT_* of the caller (a GIT_DIR would point git at another repository).
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return {**env, **_GIT_IDENTITY}


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; its stdout, stripped. A failing command raises."""
    result = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_git_env(),
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _replace_once(path: Path, old: str | re.Pattern[str], new: str) -> None:
    text = path.read_text(encoding="utf-8")
    if isinstance(old, re.Pattern):
        changed, count = old.subn(new, text)
    else:
        changed, count = text.replace(old, new), text.count(old)
    if count != 1:
        raise RuntimeError(f"{path}: expected one match of {old!r}, found {count}")
    path.write_text(changed, encoding="utf-8")


def _apply(repo: Path, stage: Stage) -> None:
    """Make the working tree of ``repo`` that of ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    shutil.copyfile(EXAMPLE / MODELS, repo / MODELS)
    for name in V2_REVISIONS:
        target = repo / VERSIONS / name
        if stage == "v1":
            target.unlink(missing_ok=True)
        else:
            shutil.copyfile(EXAMPLE / VERSIONS / name, target)
    if stage == "v1":
        _replace_once(repo / MODELS, _HEAD_TEXT_COLUMN, _V1_TEXT_COLUMN)
    _replace_once(repo / DOCKERFILE, _VARIANT_ARG, f"ARG BOOKMARKS_VARIANT={stage}")


def _commit(repo: Path, stage: Stage) -> str:
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", f"bookmarks {stage}")
    return git(repo, "rev-parse", "HEAD")


def make_bookmarks_repo(tmp_path: Path, variant: Stage = "v1") -> Path:
    """A new git repository at ``tmp_path/bookmarks`` whose one commit is ``variant``."""
    repo = tmp_path / "bookmarks"
    shutil.copytree(
        EXAMPLE,
        repo,
        ignore=shutil.ignore_patterns("__pycache__", "wheels", ".releasegate", ".pytest_cache"),
    )
    git(repo, "init", "--quiet", "--initial-branch", "main")
    _apply(repo, variant)
    _commit(repo, variant)
    return repo


def advance(repo: Path, variant: Stage) -> str:
    """Commit ``variant`` on top of ``repo``'s HEAD; the new commit's sha."""
    _apply(repo, variant)
    return _commit(repo, variant)
