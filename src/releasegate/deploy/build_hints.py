"""What to do about a build that could not reach a registry or a package index.

Such a build fails far from its cause: the last error line says only that a ``RUN`` step
returned 1, while the log above it says that ``pip`` could not resolve the index's name
or had its connection refused. :func:`network_hint` finds that line in the log and says
what makes the build work without a network: releasegate's offline mode, and what the
Dockerfile needs for it (docs/own-service.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

GUIDE = "releasegate's docs/own-service.md"
# What DNS failures and refused connections print: Go (the engine's pull), glibc and
# urllib3 (pip), curl and apt.
_UNREACHABLE_RE = re.compile(
    r"no such host|server misbehaving|temporary failure in name resolution"
    r"|name or service not known|could not resolve host|temporary failure resolving"
    r"|failed to establish a new connection|connection refused|network is unreachable",
    re.IGNORECASE,
)
_ARG_BASE_RE = re.compile(r"^\s*ARG\s+BASE_IMAGE\b", re.IGNORECASE | re.MULTILINE)
_FROM_BASE_RE = re.compile(
    r"^\s*FROM\s+(?:--platform=\S+\s+)?\$\{?BASE_IMAGE\}?(?:\s|$)", re.IGNORECASE | re.MULTILINE
)
_ARG_OFFLINE_RE = re.compile(r"^\s*ARG\s+OFFLINE\b", re.IGNORECASE | re.MULTILINE)
_COPY_WHEELS_RE = re.compile(r"^\s*COPY\s.*\bwheel", re.IGNORECASE | re.MULTILINE)
_MAX_QUOTE = 160
# The legacy builder colours a step's stderr with ANSI escapes.
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def unreachable_line(lines: Iterable[str]) -> str | None:
    """The first log line that says a host could not be resolved or reached."""
    return next((line.strip() for line in lines if _UNREACHABLE_RE.search(line)), None)


def offline_gaps(dockerfile_text: str) -> list[str]:
    """What the Dockerfile lacks for an offline build: the base image as a build arg,
    the ``OFFLINE`` switch and a stage that installs from ``wheels/``."""
    gaps = []
    if not (_ARG_BASE_RE.search(dockerfile_text) and _FROM_BASE_RE.search(dockerfile_text)):
        gaps.append("ARG BASE_IMAGE with FROM ${BASE_IMAGE}")
    if not _ARG_OFFLINE_RE.search(dockerfile_text):
        gaps.append("an OFFLINE build arg (pip install --no-index when it is 1)")
    if not _COPY_WHEELS_RE.search(dockerfile_text):
        gaps.append("a wheels stage (COPY wheels/, pip install --find-links)")
    return gaps


def _quote(line: str) -> str:
    """The line, or the part of it around what made it evidence (pip's are long)."""
    text = " ".join(_ANSI_RE.sub("", line).split())
    match = _UNREACHABLE_RE.search(text)
    if len(text) <= _MAX_QUOTE or match is None:
        return text
    start = max(0, min(match.start() - 24, len(text) - _MAX_QUOTE))
    excerpt = text[start : start + _MAX_QUOTE]
    return ("…" if start else "") + excerpt + ("…" if start + _MAX_QUOTE < len(text) else "")


def network_hint(lines: Iterable[str], dockerfile_text: str, *, offline: bool) -> str | None:
    """A hint for a failed build whose log shows an unreachable registry or index, else
    None. ``offline``: the build ran in releasegate's offline mode (no network)."""
    evidence = unreachable_line(lines)
    if evidence is None:
        return None
    gaps = offline_gaps(dockerfile_text)
    if offline:
        needs = f"; the Dockerfile lacks {', '.join(gaps)}" if gaps else ""
        return (
            f"the offline build has no network, yet a step tried to reach one"
            f" ({_quote(evidence)}): with OFFLINE=1 the Dockerfile must install only from"
            f" wheels/{needs} (see {GUIDE})"
        )
    if gaps:
        fix = f"an offline build needs, in the Dockerfile, {', '.join(gaps)}"
    else:
        fix = "build offline with releasegate build --offline (local base image, host wheels)"
    unreachable = f"no registry or package index could be reached ({_quote(evidence)})"
    return f"{unreachable}: {fix} (see {GUIDE})"
