"""What a content comparison of a live store against a backup set found.

A comparison (:mod:`releasegate.backup.content`) sorts every item — a row, a key, a
point — into one category per scope (a table, a key pattern, a collection):

- ``kept_unchanged``: in the set and live, with the same content;
- ``changed``: in the set and live, with other content;
- ``missing``: in the set, gone now;
- ``added``: live now, not in the set (written since: a restore would lose it);
- ``accepted``: differs from the set but matches a later fingerprint file the caller
  accepts too (Postgres ``also_accept``: rows as an irreversible migration left them);
- ``expired``: Redis keys whose TTL ran out since the backup (not missing);
- ``volatile``: Redis keys of ``redis.volatile_patterns`` (caches), not compared.

:attr:`ContentDiff.preserved` is the verdict of a rollback: nothing changed, nothing
missing, every scope compared.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from releasegate.backup.base import StoreBackup, sha256_file
from releasegate.errors import CheckFailed

EXAMPLES = 10
CATEGORIES = ("kept_unchanged", "changed", "missing", "added", "accepted", "expired", "volatile")
# The categories whose examples are worth showing a person.
SHOWN = ("changed", "missing", "added")


@dataclass
class ScopeDiff:
    """The counts of one scope and up to :data:`EXAMPLES` ids of each non-zero category."""

    scope: str
    kept_unchanged: int = 0
    changed: int = 0
    missing: int = 0
    added: int = 0
    accepted: int = 0
    expired: int = 0
    volatile: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)
    # Why the scope was not compared (fully), e.g. a snapshot backup; None when it was.
    note: str | None = None

    def count(self, category: str, ident: str | None = None, n: int = 1) -> None:
        """Add ``n`` items to ``category``, keeping ``ident`` as an example while few."""
        setattr(self, category, getattr(self, category) + n)
        if ident is not None:
            shown = self.examples.setdefault(category, [])
            if len(shown) < EXAMPLES:
                shown.append(ident)

    @property
    def preserved(self) -> bool:
        return self.note is None and not self.changed and not self.missing

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"scope": self.scope}
        data |= {c: getattr(self, c) for c in CATEGORIES}
        data["examples"] = {c: list(v) for c, v in self.examples.items() if v}
        data["note"] = self.note
        return data


@dataclass
class ContentDiff:
    """A live store compared with a backup set, scope by scope."""

    store: str  # "postgres" | "redis" | "qdrant"
    set_id: str
    scopes: list[ScopeDiff] = field(default_factory=list)
    seconds: float = 0.0

    def scope(self, name: str) -> ScopeDiff:
        """The scope of that name, created (empty) on first use."""
        for existing in self.scopes:
            if existing.scope == name:
                return existing
        created = ScopeDiff(name)
        self.scopes.append(created)
        return created

    def total(self, category: str) -> int:
        return sum(int(getattr(s, category)) for s in self.scopes)

    @property
    def preserved(self) -> bool:
        """Every item of the set is still there, unchanged (added ones are allowed)."""
        return all(s.preserved for s in self.scopes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "set_id": self.set_id,
            "preserved": self.preserved,
            "totals": {c: self.total(c) for c in CATEGORIES},
            "scopes": [s.to_dict() for s in self.scopes],
            "seconds": round(self.seconds, 3),
        }


def describe(diff: ContentDiff) -> list[str]:
    """Lines for people: ``public.documents: 1200 kept, 0 changed, 0 missing, 37 added``,
    each non-zero changed/missing/added category followed by an indented line of examples."""
    lines: list[str] = []
    for s in diff.scopes:
        parts = [
            f"{s.kept_unchanged} kept",
            f"{s.changed} changed",
            f"{s.missing} missing",
            f"{s.added} added",
        ]
        if s.accepted:
            parts.append(f"{s.accepted} as after the migration")
        if s.expired:
            parts.append(f"{s.expired} expired")
        if s.volatile:
            parts.append(f"{s.volatile} volatile (not compared)")
        line = f"{diff.store} {s.scope}: {', '.join(parts)}"
        lines.append(line + (f" ({s.note})" if s.note else ""))
        for category in SHOWN:
            shown = s.examples.get(category)
            if getattr(s, category) and shown:
                more = ", ..." if getattr(s, category) > len(shown) else ""
                lines.append(f"  {category}: {', '.join(shown)}{more}")
    return lines


def checked_file(set_dir: Path, entry: StoreBackup, name: str) -> Path:
    """The set's file ``name``, after checking it against the manifest: listed, inside the
    set folder, of the recorded size and SHA-256. :class:`CheckFailed` otherwise."""
    listed = next((f for f in entry.files if f.name == name), None)
    path = set_dir / name
    if listed is None or not path.resolve().is_relative_to(set_dir.resolve()):
        raise CheckFailed(f"backup set {set_dir.name} is damaged: it lists no file {name}")
    if not path.is_file():
        raise CheckFailed(f"{name} is missing from backup set {set_dir.name}")
    if path.stat().st_size != listed.size or sha256_file(path) != listed.sha256:
        raise CheckFailed(
            f"backup set {set_dir.name} is damaged: {name} does not match its checksum"
        )
    return path


def short(ident: str, limit: int = 80) -> str:
    """An id shortened for display."""
    return ident if len(ident) <= limit else ident[: limit - 1] + "…"


class IdSet:
    """Membership of many ids at 8 bytes each: a sorted array of 64-bit BLAKE2b hashes.

    Two ids share a hash with probability about n²/2⁶⁵ (1e-8 for a million ids); such an
    id would count as present. :meth:`freeze` after the last :meth:`add`.
    """

    def __init__(self) -> None:
        self._hashes = array("Q")
        self._sorted: np.ndarray[Any, np.dtype[np.uint64]] | None = None

    @staticmethod
    def _hash(ident: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(ident, digest_size=8).digest(), "little")

    def add(self, ident: bytes) -> None:
        self._hashes.append(self._hash(ident))

    def freeze(self) -> None:
        self._sorted = np.sort(np.frombuffer(self._hashes, dtype=np.uint64))
        self._hashes = array("Q")

    def contains(self, idents: Sequence[bytes]) -> list[bool]:
        """For each id, whether it was added."""
        if self._sorted is None:
            self.freeze()
        assert self._sorted is not None
        if not idents or not self._sorted.size:
            return [False] * len(idents)
        probe = np.fromiter((self._hash(i) for i in idents), dtype=np.uint64, count=len(idents))
        at = np.minimum(np.searchsorted(self._sorted, probe), self._sorted.size - 1)
        found: list[bool] = (self._sorted[at] == probe).tolist()
        return found


def merge_keys(*streams: Iterable[tuple[bytes, Any]]) -> Iterable[tuple[bytes, list[Any]]]:
    """Merge streams sorted by key (bytes): each key with its value from every stream
    (None where a stream lacks it). Memory: one item per stream."""
    iters = [iter(s) for s in streams]
    heads: list[tuple[bytes, Any] | None] = [next(it, None) for it in iters]
    while True:
        present = [h[0] for h in heads if h is not None]
        if not present:
            return
        key = min(present)
        values: list[Any] = []
        for i, head in enumerate(heads):
            if head is not None and head[0] == key:
                values.append(head[1])
                heads[i] = next(iters[i], None)
            else:
                values.append(None)
        yield key, values
