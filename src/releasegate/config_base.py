"""The building blocks of the config sections: durations, ratios, threshold rules and the
strict section base. :mod:`releasegate.config` re-exports what callers import from it."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from releasegate.errors import ConfigError

# [0-9], not \d: \d and float() also take full-width and Arabic-Indic digits.
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|min|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from ``5``, ``2.5``, ``"500ms"``, ``"5s"``, ``"2m"`` or ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        from releasegate.gates.thresholds import digits_hint

        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 5s, 2m{digits_hint(value)}")
    if not math.isfinite(seconds):  # TOML has nan and inf literals
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`, for display."""
    if seconds < 1:
        return f"{seconds * 1000:.12g}ms"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:.12g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _ratio(value: object) -> float:
    from releasegate.gates.thresholds import parse_ratio

    return parse_ratio(value)


Ratio = Annotated[float, BeforeValidator(_ratio)]


def threshold_rules(value: dict[str, list[str]]) -> dict[str, list[str]]:
    """``value`` when every rule of every scope parses; the parser's message otherwise."""
    from releasegate.gates.thresholds import parse_thresholds

    try:
        parse_thresholds(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value
