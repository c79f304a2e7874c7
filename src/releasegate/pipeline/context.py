"""What a release carries from step to step: options, the undo log, and the result.

The *undo log* (``changes``) lists every change the release made, in order, each written
to the ledger before the change is attempted. Rollback, ``--resume`` after a crash, and
a manual ``releasegate rollback`` all read it back from the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from releasegate.config import Settings
from releasegate.ledger import Ledger
from releasegate.lock import HeldLock

# Kinds of changes, in the order a release makes them; rollback undoes them in reverse.
BACKUP = "backup"
POSTGRES = "postgres"
REDIS = "redis"
QDRANT = "qdrant"
DEPLOY = "deploy"
# A share of new requests for the new color (its ``weight``, updated at each canary step).
CANARY = "canary"
SWITCH = "switch"
STOP_PREVIOUS = "stop_previous"
CONTRACT = "contract"


@dataclass(frozen=True)
class ReleaseOptions:
    """What the user asked for."""

    image: str
    dry_run: bool = False
    allow_contract: bool = False
    force: bool = False
    verify_backup: bool | None = None  # None: release.verify_backup
    watch: float | None = None  # None: release.watch


@dataclass
class StepOutcome:
    """What one step returns: a status, one line for people, details for the report."""

    ok: bool
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    # The run stops after this step, to be continued by ``release --resume``.
    paused: bool = False

    @classmethod
    def skip(cls, summary: str) -> StepOutcome:
        return cls(True, summary, skipped=True)


@dataclass
class StepRecord:
    name: str
    status: str  # ok | failed | skipped | paused
    duration_s: float
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "summary": self.summary,
            "detail": self.detail,
        }


@dataclass
class ReleaseContext:
    """The state of one release while its steps run."""

    settings: Settings
    options: ReleaseOptions
    ledger: Ledger
    release_id: int
    lock: HeldLock
    performer: str
    git_sha: str | None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    image_digest: str | None = None
    previous_image: str | None = None
    live_before: str | None = None
    target: str | None = None
    # No color was live and none ran: the release deploys blue with nothing beside it.
    first_release: bool = False
    changes: list[dict[str, Any]] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)  # report sections by name
    backup_set: str | None = None
    manifest: dict[str, Any] | None = None
    progress: Callable[[str], None] = lambda _message: None
    # Running figures of a step that takes a while (a canary step's counts): name, text.
    step_progress: Callable[[str, str], None] = lambda _name, _text: None

    def record_change(self, kind: str, **data: Any) -> None:
        """Append to the undo log, in the ledger first: a crash right after still knows."""
        self.changes.append({"kind": kind, **data})
        self.ledger.merge_summary(self.release_id, {"changes": self.changes})

    def update_change(self, kind: str, **data: Any) -> None:
        """Add what became known after a change was made (e.g. the revision it reached)."""
        change = next(c for c in reversed(self.changes) if c["kind"] == kind)
        change.update(data)
        self.ledger.merge_summary(self.release_id, {"changes": self.changes})

    @property
    def out_dir(self) -> Path:
        return self.settings.resolve_path(self.settings.raw.release.report_dir)


@dataclass
class ReleaseResult:
    """The outcome of a release, as the report and the CLI see it."""

    release_id: int
    service: str
    outcome: str  # succeeded | paused | rolled_back | rollback_failed | failed | dry_run | blocked
    exit_code: int
    image: dict[str, Any]
    performer: str
    git_sha: str | None
    started_at: str
    finished_at: str
    duration_s: float
    colors: dict[str, str | None]
    steps: list[dict[str, Any]]
    sections: dict[str, Any]
    error: str | None = None
    kind: str = "release"
    first_release: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = {
            "release_id": self.release_id,
            "service": self.service,
            "kind": self.kind,
            "image": self.image,
            "performer": self.performer,
            "git_sha": self.git_sha,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.duration_s, 3),
            "colors": self.colors,
            "first_release": self.first_release,
            "steps": self.steps,
            "error": self.error,
        }
        return {**data, **self.sections}
