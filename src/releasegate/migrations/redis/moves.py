"""Declarative key moves: the Redis migration format that runs in expand/contract form.

A migration module that moves JSON string keys to a new layout declares them instead of
writing ``up(ctx)``/``down(ctx)``::

    MOVES = [KeyMove("sess:*", "sess:", "session:", up=to_v2, down=to_v1)]

Each :class:`KeyMove` says: every string key matching ``pattern`` (which starts with
``old_prefix``) has a twin ``new_prefix + rest`` whose value is ``up(json value)``;
``down`` turns a new value back into an old one. Both are plain functions of one decoded
JSON object returning another (:func:`~releasegate.migrations.redis.json_fields.field_map`
builds the usual ones). They are always applied to a value of the *other* layout, never
to their own output, so they need not be idempotent.

From that declaration releasegate derives everything: standalone ``migrate up``/``down``
(an atomic rename + transform per key), and a release's expand, catch-up, contract and
undo (:mod:`releasegate.migrations.redis.phases`). A module with code ``up``/``down``
still works standalone but cannot run in expand form (:func:`expand_problems_of` says so).

This module also names the keys the expand phases keep under the version key's prefix
(the helpers never touch keys there): the expansion record and one tracking hash per move.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import redis

from releasegate.errors import MigrationScriptError
from releasegate.stores import redis as stores

JsonTransform = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class KeyMove:
    """String keys ``old_prefix...`` matching ``pattern`` become ``new_prefix...``."""

    pattern: str
    old_prefix: str
    new_prefix: str
    up: JsonTransform
    down: JsonTransform | None = None

    @property
    def new_pattern(self) -> str:
        """The pattern of the new layout: ``pattern`` with the new prefix."""
        old = stores.glob_escape(self.old_prefix)
        return stores.glob_escape(self.new_prefix) + self.pattern[len(old) :]

    def describe(self) -> str:
        return f"{self.pattern} -> {self.new_pattern}"

    def problem(self) -> str | None:
        """Why this move is malformed, or None."""
        if not self.old_prefix or self.old_prefix == self.new_prefix or not self.new_prefix:
            return f"{self.pattern}: old and new prefixes must differ and not be empty"
        if not self.pattern.startswith(stores.glob_escape(self.old_prefix)):
            return f"pattern {self.pattern!r} must start with {self.old_prefix!r}"
        if not callable(self.up) or (self.down is not None and not callable(self.down)):
            return f"{self.pattern}: up and down must be functions of a JSON object"
        probe = b"\x00probe"
        if stores.compile_glob(self.pattern).match(self.new_prefix.encode() + probe):
            return f"new names {self.new_prefix}* would match {self.pattern!r} again"
        if stores.compile_glob(self.new_pattern).match(self.old_prefix.encode() + probe):
            return f"old names {self.old_prefix}* would match {self.new_pattern!r}"
        return None


def moves_of(module: ModuleType, file_name: str) -> list[KeyMove] | None:
    """The module's ``MOVES`` (checked), or None when it defines ``up``/``down`` code."""
    declared = getattr(module, "MOVES", None)
    if declared is None:
        return None
    if callable(getattr(module, "up", None)) or callable(getattr(module, "down", None)):
        raise MigrationScriptError(
            f"redis migration {file_name} defines MOVES and up/down: keep one of the two"
        )
    moves = list(declared) if isinstance(declared, list | tuple) else []
    if not moves or not all(isinstance(m, KeyMove) for m in moves):
        raise MigrationScriptError(
            f"redis migration {file_name}: MOVES must be a non-empty list of KeyMove"
        )
    for move in moves:
        problem = move.problem()
        if problem:
            raise MigrationScriptError(f"redis migration {file_name}: {problem}")
    return moves


def _overlap(a: KeyMove, b: KeyMove) -> bool:
    """Whether the keys of two moves (old or new names) may meet: one prefix starts the
    other (conservative: the patterns may be narrower than their prefixes)."""
    ours = (a.old_prefix, a.new_prefix)
    theirs = (b.old_prefix, b.new_prefix)
    return any(p.startswith(q) or q.startswith(p) for p in ours for q in theirs)


def expand_problems_of(
    named: list[tuple[str, list[KeyMove] | None]],
) -> list[str]:
    """Why migrations ``(label, moves)`` cannot be expanded together, one line each."""
    problems: list[str] = []
    seen: list[tuple[str, KeyMove]] = []
    for label, moves in named:
        if moves is None:
            problems.append(
                f"redis {label}: written as up/down code, not MOVES: it cannot run beside"
                " the old version (expand form); declare its key moves"
            )
            continue
        for move in moves:
            if move.down is None:
                problems.append(
                    f"redis {label}: the move {move.describe()} has no down transform:"
                    " the release could not carry new writes back on undo"
                )
            problems += [
                f"redis {label}: the move {move.describe()} touches the keys of"
                f" {other_label} ({other.describe()}): release them one at a time"
                for other_label, other in seen
                if _overlap(move, other)
            ]
            seen.append((label, move))
    return problems


# -- the keys the expand phases keep ------------------------------------------------------


def record_key(version_key: str) -> str:
    """The hash that records the open expansion (see :class:`Expansion`)."""
    return f"{version_key}:expanded"


def tracking_key(version_key: str, version: str, index: int) -> str:
    """The hash of one move: key suffix -> digest of the old value + digest of its copy."""
    return f"{version_key}:expand:{version}:{index}"


class ExpandState:
    EXPANDING = "expanding"  # copies being written; the version key is still the old one
    EXPANDED = "expanded"  # both layouts kept in step; the version key is the new one
    CONTRACTING = "contracting"  # old layout being deleted
    UNDOING = "undoing"  # copies being removed (or carried back)


@dataclass
class Expansion:
    """The open expansion, kept in Redis beside the version key."""

    state: str
    before: str | None  # the data version before the expand
    after: str  # the data version the expand reaches
    versions: list[str]  # the migrations expanded, oldest first
    started_at: float
    caught_up_at: float | None = None
    catch_ups: int = 0
    carry_back: bool = False  # an undo that carries new writes back has started

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "before": self.before or "base",
            "after": self.after,
            "versions": self.versions,
            "started_at": self.started_at,
            "caught_up_at": self.caught_up_at,
            "catch_ups": self.catch_ups,
            "carry_back": self.carry_back,
        }


def read_expansion(client: redis.Redis, version_key: str) -> Expansion | None:
    raw = client.hget(record_key(version_key), "json")
    if raw is None:
        return None
    data = json.loads(raw)
    before = data["before"]
    return Expansion(
        state=data["state"],
        before=None if before == "base" else before,
        after=data["after"],
        versions=list(data["versions"]),
        started_at=float(data["started_at"]),
        caught_up_at=data.get("caught_up_at"),
        catch_ups=int(data.get("catch_ups", 0)),
        carry_back=bool(data.get("carry_back", False)),
    )


def write_expansion(
    pipe: redis.Redis | redis.client.Pipeline, version_key: str, record: Expansion
) -> None:
    pipe.hset(record_key(version_key), "json", json.dumps(record.to_dict()))


def new_expansion(before: str | None, versions: list[str]) -> Expansion:
    return Expansion(ExpandState.EXPANDING, before, versions[-1], versions, time.time())
