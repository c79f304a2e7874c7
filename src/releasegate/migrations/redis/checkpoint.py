"""Where a Redis migration step stands: its counts, progress reports and its checkpoint hash."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass
class StepStats:
    """What one helper call did; the ``key counts`` of the ledger event."""

    step: int
    operation: str
    pattern: str
    scanned: int = 0  # keys SCAN returned under the pattern
    changed: int = 0  # keys moved, rewritten or given a TTL
    unchanged: int = 0  # nothing to do (already done, same value, TTL already right)
    gone: int = 0  # deleted between SCAN and the change (or moved by an earlier run)
    raced: int = 0  # changed by someone else between read and write, then retried
    conflicts: int = 0  # renames whose target already existed: left alone
    invalid: int = 0  # values a JSON transform could not read: left alone
    batches: int = 0
    passes: int = 0
    resumed: bool = False  # continued from a checkpoint
    skipped: bool = False  # finished by an earlier run: nothing done now
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # a few keys behind problems

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass(frozen=True)
class Progress:
    """Reported after every batch: the version, the step, and the counts so far."""

    version: str
    direction: str
    stats: StepStats


ProgressCallback = Callable[[Progress], None]


class Checkpoint:
    """The progress of one version in one direction, in a Redis hash.

    Fields are prefixed by the step number (``3:cursor``, ``3:run``, ``3:pass``,
    ``3:changed``, ``3:batches``, ``3:done``). Batch scripts write them in the same atomic
    call as the data; :meth:`finish_step` marks a step done.
    """

    def __init__(self, client: redis.Redis, key: str, run_id: str) -> None:
        self.client = client
        self.key = key
        self.run_id = run_id
        self.fields: dict[str, str] = {
            as_text(k): as_text(v) for k, v in client.hgetall(key).items()
        }

    @property
    def exists(self) -> bool:
        return bool(self.fields)

    def get(self, step: int, name: str) -> str | None:
        return self.fields.get(f"{step}:{name}")

    def finish_step(self, step: int) -> None:
        self.client.hset(self.key, f"{step}:done", "1")


def checkpoint_key(version_key: str, version: str, direction: str) -> str:
    """The hash that holds the checkpoint of ``version`` migrating in ``direction``."""
    return f"{version_key}:checkpoint:{version}:{direction}"


def progress_of(checkpoint: Mapping[str, str], steps: Sequence[int] = ()) -> dict[str, Any]:
    """A checkpoint hash in readable form: per step, cursor, pass, changed and done."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in checkpoint.items():
        step, _, field_name = name.partition(":")
        if steps and int(step) not in steps:
            continue
        out.setdefault(step, {})[field_name] = value
    return out


def as_text(value: Any) -> str:
    """A Redis reply (bytes or not) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
