"""How a value of a release result becomes text in a report: redacted, clipped, formatted.

Shared by the Markdown (:mod:`~releasegate.report.render`) and the plain-text
(:mod:`~releasegate.report.text`) renderings. The result is a plain dict in which any part
may be missing or of an odd shape, so these read defensively.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from releasegate.secrets import redact

MAX_CELL = 300  # characters of one table cell; longer is unreadable anyway
MAX_ERROR = 4000
MAX_COMMAND = 2000

STATUS_WORDS = {
    "succeeded": "SUCCEEDED",
    "paused": "PAUSED",
    "rolled_back": "ROLLED BACK",
    "rollback_failed": "ROLLBACK FAILED",
    "failed": "FAILED",
    "dry_run": "DRY RUN",
    "blocked": "BLOCKED",
}
STORES = ("postgres", "redis", "qdrant")
# What a first release's report says about it (result key ``first_release``).
FIRST_RELEASE = "no color was live and none ran: the new version was deployed as blue, alone"


def status_word(outcome: object) -> str:
    """The upper-case word of an outcome (``rolled_back`` -> ``ROLLED BACK``)."""
    text = "" if outcome is None else str(outcome)
    return STATUS_WORDS.get(text, (text or "unknown").upper().replace("_", " "))


def redact_data(value: Any) -> Any:
    """A copy of a JSON-able value with every string (and key) passed through ``redact``."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {(redact(k) if isinstance(k, str) else k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def as_text(value: Any) -> str:
    """The one way a value becomes text here: redacted first."""
    return "" if value is None else redact(str(value))


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` as a list when it is a list or tuple, else an empty list."""
    return list(value) if isinstance(value, list | tuple) else []


def as_maps(value: Any) -> list[Mapping[str, Any]]:
    """Every item of a list as a mapping (others become empty ones)."""
    return [as_map(item) for item in as_list(value)]


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(value: Any, limit: int = MAX_CELL) -> str:
    """A value as redacted text on one line, at most ``limit`` characters."""
    # Redacted whole, then cut: a cut first could leave part of a secret unrecognised.
    return clip(" ".join(as_text(value)[: limit * 4].split()), limit)


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (a bool is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_seconds(value: Any) -> str:
    """``85ms``, ``12.5s``, ``3m05.0s``; ``-`` for no number."""
    if not is_number(value):
        return "-"
    if value < 0.1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def format_size(value: Any) -> str:
    """``512 B``, ``1.5 KiB``, ``2.0 MiB``, ``3.2 GiB``; ``-`` for no number."""
    if not is_number(value):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_number(value: Any) -> str:
    """An int with thousands separators, a float in ``g`` form, else the text."""
    if not is_number(value):
        return as_text(value) or "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def compact_json(value: Any, limit: int = 160) -> str:
    """Small structured detail as compact JSON (redacted before JSON escapes it)."""
    if not value:
        return ""
    try:
        text = json.dumps(redact_data(value), default=str, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        text = as_text(value)
    return clip(text, limit)


def pairs_text(value: Any) -> str:
    """``{"alembic": "0006"}`` -> ``alembic 0006``."""
    return ", ".join(f"{as_text(k)} {as_text(v) or '-'}" for k, v in as_map(value).items())


def weights_text(value: Any) -> str:
    """``{"blue": 0, "green": 100}`` -> ``blue 0, green 100``."""
    return ", ".join(f"{as_text(k)} {format_number(v)}" for k, v in sorted(as_map(value).items()))


def files_size(files: Sequence[Mapping[str, Any]]) -> int:
    """The bytes of the listed files that record a size."""
    return sum(int(f["size"]) for f in files if is_number(f.get("size")))
