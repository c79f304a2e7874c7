"""Facts about the run itself: who performs it and which commit it comes from."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
from pathlib import Path


def performer() -> str:
    """Who is running this: RELEASEGATE_PERFORMER, the GitHub actor, or user@host."""
    if who := os.environ.get("RELEASEGATE_PERFORMER"):
        return who
    if actor := os.environ.get("GITHUB_ACTOR"):
        return f"{actor} (github)"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def git_sha(directory: Path) -> str | None:
    """The commit being released: GITHUB_SHA in Actions, else ``git rev-parse HEAD``."""
    if sha := os.environ.get("GITHUB_SHA"):
        return sha
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
