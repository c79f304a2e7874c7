"""Key counts of a Redis keyspace or dump file: in total, per type, with a TTL, per pattern.

The manifest stores them at backup time; verification and the loss report compare them
with the counts of a restored copy or of the live keyspace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from releasegate.backup.base import Difference
from releasegate.backup.redis_format import TYPE_NAMES, DumpReader
from releasegate.stores import redis as stores

# Type and TTL presence of a batch of keys: two bytes per key (type code, has-TTL), or
# 0xFE when the key is gone.
_INSPECT_LUA = """
local codes = {string=0, hash=1, list=2, set=3, zset=4, stream=5}
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    out[i] = '\\254\\0'
  else
    local ttl = 0
    if redis.call('PTTL', key) > 0 then ttl = 1 end
    out[i] = string.char(codes[kind] or 255, ttl)
  end
end
return table.concat(out)
"""


@dataclass
class _Tally:
    keys: int = 0
    with_ttl: int = 0
    types: dict[str, int] = field(default_factory=dict)

    def add(self, type_name: str, has_ttl: bool) -> None:
        self.keys += 1
        self.with_ttl += has_ttl
        self.types[type_name] = self.types.get(type_name, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": self.keys,
            "with_ttl": self.with_ttl,
            "types": dict(sorted(self.types.items())),
        }


class KeyCounts:
    """Keys in total, per type, with a TTL, and the same per configured pattern.

    The dict form (:meth:`to_dict`) is what the manifest stores::

        {"keys": 3, "with_ttl": 1, "types": {"hash": 1, "string": 2},
         "patterns": {"sess:*": {"keys": 1, "with_ttl": 1, "types": {"string": 1}}, ...}}

    A key matched by several patterns counts once in the totals and once per pattern.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = list(dict.fromkeys(patterns))
        self.regexes = [stores.compile_glob(p) for p in self.patterns]
        self.total = _Tally()
        self.per_pattern = [_Tally() for _ in self.patterns]

    def add(self, key: bytes, type_code: int, has_ttl: bool) -> None:
        type_name = TYPE_NAMES.get(type_code, "other")
        self.total.add(type_name, has_ttl)
        if len(self.regexes) == 1:
            self.per_pattern[0].add(type_name, has_ttl)
            return
        for tally, rx in zip(self.per_pattern, self.regexes, strict=True):
            if rx.match(key):
                tally.add(type_name, has_ttl)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.total.to_dict(),
            "patterns": {
                p: t.to_dict() for p, t in zip(self.patterns, self.per_pattern, strict=True)
            },
        }


def _flatten(counts: dict[str, Any]) -> dict[str, int]:
    """Every figure of a counts dict under a readable name (the item of a Difference)."""
    flat: dict[str, int] = {}

    def one(prefix: str, tally: dict[str, Any]) -> None:
        flat[f"keys{prefix}"] = int(tally.get("keys", 0))
        flat[f"keys{prefix} with a TTL"] = int(tally.get("with_ttl", 0))
        for type_name, n in tally.get("types", {}).items():
            flat[f"keys{prefix} ({type_name})"] = int(n)

    one("", counts)
    for pattern, tally in counts.get("patterns", {}).items():
        one(f" {pattern}", tally)
    return flat


def compare_counts(expected: dict[str, Any], actual: dict[str, Any]) -> list[Difference]:
    """The figures that differ between two counts dicts (missing figures count as 0)."""
    want, have = _flatten(expected), _flatten(actual)
    return [
        Difference("redis", item, want.get(item, 0), have.get(item, 0))
        for item in sorted(set(want) | set(have))
        if want.get(item, 0) != have.get(item, 0)
    ]


def add_counts(a: dict[str, Any], b: dict[str, Any], sign: int = 1) -> dict[str, Any]:
    """``a + b`` (or ``a - b`` with ``sign=-1``) figure by figure, in the counts shape."""

    def one(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
        xt, yt = x.get("types", {}), y.get("types", {})
        types = {t: xt.get(t, 0) + sign * yt.get(t, 0) for t in sorted({*xt, *yt})}
        return {
            "keys": x.get("keys", 0) + sign * y.get("keys", 0),
            "with_ttl": x.get("with_ttl", 0) + sign * y.get("with_ttl", 0),
            "types": {t: n for t, n in types.items() if n},
        }

    result = one(a, b)
    ap, bp = a.get("patterns", {}), b.get("patterns", {})
    result["patterns"] = {p: one(ap.get(p, {}), bp.get(p, {})) for p in dict.fromkeys([*ap, *bp])}
    return result


def _inspect_pages(
    client: redis.Redis, pattern_set: stores.PatternSet, batch_size: int
) -> Iterator[tuple[list[bytes], bytes]]:
    """(keys, two bytes per key: type code and has-TTL) for every page of the keyspace."""
    inspect = client.register_script(_INSPECT_LUA)
    for _cursor, page in stores.scan_pages(client, pattern_set.match, batch_size):
        keys = [k for k in dict.fromkeys(page) if pattern_set.wanted(k)]
        if keys:
            yield keys, bytes(inspect(keys=keys))


def count_keys(
    client: redis.Redis,
    patterns: Sequence[str],
    *,
    batch_size: int = 1000,
    key_prefix: bytes = b"",
    exclude_prefixes: Sequence[bytes] = (),
) -> dict[str, Any]:
    """Live counts of the keys matching ``patterns`` (see :class:`KeyCounts`).

    ``key_prefix`` counts the keys stored under that prefix as if it were not there (a
    scratch copy restored under a prefix). Counts come from SCAN and are exact on a quiet
    keyspace; under concurrent writes they are a close estimate.
    """
    prefix_glob = stores.glob_escape(key_prefix.decode())
    pattern_set = stores.PatternSet([prefix_glob + p for p in patterns], exclude_prefixes)
    counts = KeyCounts(patterns)
    strip = len(key_prefix)
    for keys, info in _inspect_pages(client, pattern_set, batch_size):
        for i, key in enumerate(keys):
            code = info[2 * i]
            if code != 0xFE:
                counts.add(key[strip:], code, info[2 * i + 1] == 1)
    return counts.to_dict()


def file_counts(path: Path, patterns: Sequence[str] | None = None) -> dict[str, Any]:
    """Counts of the keys inside a dump file, offline (no Redis needed)."""
    reader = DumpReader(path)
    counts = KeyCounts(patterns or reader.meta.get("patterns") or ["*"])
    for rec in reader.records():
        counts.add(rec.key, rec.type_code, rec.expire_at_ms > 0)
    return counts.to_dict()
