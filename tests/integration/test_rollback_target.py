"""Which release a rollback undoes: only release rows, and never an older good one by default.

``releasegate rollback`` without ``--to`` undoes the newest release only while it is the
one that serves (succeeded, or still running). When the newest release already ended
otherwise (rolled back, failed, rollback failed), it refuses and asks for an explicit id,
instead of reaching back to the previous good release. ``scripts/rollback.sh`` resumes
only an interrupted *release* row: a restore, backup or migrate row is never resumed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from releasegate.errors import StateError
from releasegate.ledger import Ledger, Outcome
from releasegate.pipeline import run

if TYPE_CHECKING:
    from conftest import Project

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def _row(ledger: Ledger, service: str, kind: str, outcome: Outcome | None) -> int:
    release_id = ledger.start_release(service, kind, "tests", image_ref=f"notes:{kind}")
    if outcome is not None:
        ledger.finish_release(release_id, outcome, {})
    return release_id


@pytest.mark.parametrize(
    "last_outcome", [Outcome.ROLLED_BACK, Outcome.FAILED, Outcome.ROLLBACK_FAILED]
)
def test_rollback_without_id_never_reaches_back_to_a_good_release(
    project: Project, last_outcome: Outcome
) -> None:
    settings = project.settings()
    with Ledger.open(project.url) as ledger:
        good = _row(ledger, project.service, "release", Outcome.SUCCEEDED)
        last = _row(ledger, project.service, "release", last_outcome)
        _row(ledger, project.service, "restore", Outcome.SUCCEEDED)  # newer, not a release
    with pytest.raises(StateError) as caught:
        run.rollback(settings)
    message = str(caught.value)
    assert f"release {last}" in message and str(last_outcome) in message
    assert "--to" in message and f"release {good} " not in message
    with Ledger.open(project.url) as ledger:
        assert ledger.release(good).outcome == "succeeded"  # type: ignore[union-attr]
        kinds = [r.kind for r in ledger.releases(project.service, nested=True)]
    assert "rollback" not in kinds  # nothing was started


def test_rollback_of_a_row_that_is_not_a_release_is_refused(project: Project) -> None:
    settings = project.settings()
    with Ledger.open(project.url) as ledger:
        restore = _row(ledger, project.service, "restore", Outcome.SUCCEEDED)
    with pytest.raises(Exception, match=f"no release with id {restore}"):
        run.rollback(settings, restore)


def _rollback_sh(project: Project) -> subprocess.CompletedProcess[str]:
    env = {
        **project.env,
        "RELEASEGATE": str(Path(os.environ.get("VIRTUAL_ENV", REPO_ROOT / ".venv")) / "bin"
                           / "releasegate"),
    }  # fmt: skip
    if not Path(env["RELEASEGATE"]).exists():
        env.pop("RELEASEGATE")
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "rollback.sh")],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rollback_sh_resumes_only_an_interrupted_release(project: Project) -> None:
    with Ledger.open(project.url) as ledger:
        _row(ledger, project.service, "release", Outcome.ROLLED_BACK)
        # A newer restore row left running (its runner died): not a release to resume.
        _row(ledger, project.service, "restore", None)
    result = _rollback_sh(project)
    assert "resuming" not in result.stderr, result.stderr
    assert result.returncode != 0
    assert "name the release to undo with --to" in result.stderr, result.stderr


def test_rollback_sh_resumes_an_interrupted_release(project: Project) -> None:
    with Ledger.open(project.url) as ledger:
        interrupted = _row(ledger, project.service, "release", None)  # its runner died
        _row(ledger, project.service, "backup", Outcome.SUCCEEDED)
    result = _rollback_sh(project)
    assert "an interrupted release is in the ledger: resuming it" in result.stderr
    # Its undo log is empty: the resume ends it as failed, with nothing to undo.
    with Ledger.open(project.url) as ledger:
        row = ledger.release(interrupted)
    assert row is not None and row.outcome == "failed", result.stderr
