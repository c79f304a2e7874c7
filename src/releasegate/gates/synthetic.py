"""The marker of synthetic traffic: every request releasegate itself sends to a service.

Smoke checks, the SLO gate and the post-promotion watch send
``X-Releasegate-Synthetic: <marker>`` and ``User-Agent: releasegate/<version> (synthetic)``
with every request. The marker is the release id when the pipeline runs them, and
``manual`` otherwise. A service can then mark what such requests write, and a cleanup
hook (:mod:`releasegate.hooks`) can delete exactly that data afterwards.

Kept free of heavy imports: the Locust plugin, which runs
inside the Locust process, imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from releasegate import __version__
from releasegate.errors import ConfigError

HEADER = "X-Releasegate-Synthetic"
MANUAL = "manual"
# A marker travels in an HTTP header, an environment variable and the service's data:
# short, printable, no spaces.
_MARKER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def user_agent() -> str:
    """``releasegate/<version> (synthetic)``."""
    return f"releasegate/{__version__} (synthetic)"


def marker_for(synthetic_id: int | str | None) -> str:
    """The header value for a release id (``None``: a manual run, ``"manual"``).

    A value that cannot travel in a header (spaces, control characters, more than 64
    characters) is a :class:`ConfigError`.
    """
    marker = MANUAL if synthetic_id is None else str(synthetic_id)
    if not _MARKER_RE.match(marker):
        raise ConfigError(
            f"invalid synthetic marker {marker[:80]!r}: use 1-64 characters"
            " among letters, digits and . _ : -"
        )
    return marker


def headers(marker: str) -> dict[str, str]:
    """The headers every synthetic request carries."""
    return {HEADER: marker, "User-Agent": user_agent()}


def add_to(given: Mapping[str, str] | None, marker: str) -> dict[str, str]:
    """``given`` headers plus the marker's: the marker header replaces any spelling of it,
    a User-Agent already given stays."""
    merged = {k: v for k, v in (given or {}).items() if k.lower() != HEADER.lower()}
    if all(k.lower() != "user-agent" for k in merged):
        merged["User-Agent"] = user_agent()
    merged[HEADER] = marker
    return merged
