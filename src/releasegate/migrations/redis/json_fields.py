"""JSON field transforms for Redis data migrations: renames, defaults, dropped fields."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

JsonFn = Callable[[dict[str, Any]], dict[str, Any] | None]

_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def camel_to_snake(name: str) -> str:
    """``userAgent`` -> ``user_agent``, ``HTTPCode`` -> ``http_code``."""
    return _CAMEL_RE.sub("_", name).lower()


def snake_to_camel(name: str) -> str:
    """``user_agent`` -> ``userAgent``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def field_map(
    rename: Mapping[str, str],
    *,
    defaults: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
) -> JsonFn:
    """A JSON transform: rename fields, add ``defaults`` for missing ones, ``drop`` others.

    Fields not named stay as they are (and keep their order). Applying it to its own
    output changes nothing, so it is safe for in-place transforms.
    """
    renames = dict(rename)
    extra = dict(defaults or {})
    dropped = set(drop)

    def transform(value: dict[str, Any]) -> dict[str, Any]:
        out = {renames.get(k, k): v for k, v in value.items() if k not in dropped}
        for name, default in extra.items():
            out.setdefault(name, default)
        return out

    return transform
