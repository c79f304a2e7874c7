"""``releasegate release`` end to end: the example service on real Postgres, Redis,
embedded Qdrant, Docker and HAProxy, with a short Locust SLO gate.

v2 is released and promoted; v3-bad fails its SLO gate and is rolled back, verified
against the pre-release manifest; a dry run and a release blocked by a pending contract
revision change nothing; a rolled-back image is refused unless ``--force``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from release_env import ReleaseEnv, ensure_images, open_release_env

pytestmark = pytest.mark.slow

STEPS = [
    "preflight",
    "plan",
    "backup",
    "migrate",
    "deploy",
    "smoke",
    "slo gate",
    "promote",
    "watch",
    "finalize",
]


@pytest.fixture(scope="module")
def images() -> None:
    ensure_images()


@pytest.fixture
def release_env(images: None, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[ReleaseEnv]:
    with open_release_env(tmp_path / "project", pg_url, redis_url) as env:
        yield env


def _snapshot(env: ReleaseEnv) -> dict[str, Any]:
    return {
        "versions": env.versions(),
        "counts": env.counts(),
        "weights": env.weights(),
        "containers": env.container_colors(),
    }


def test_dry_run_and_a_blocked_contract_change_nothing(release_env: ReleaseEnv) -> None:
    env = release_env
    before = _snapshot(env)
    assert before["versions"]["postgres"] == "0002"

    dry = env.run("release", "--image", "notes:v2", "--dry-run", "--allow-contract", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    data = json.loads(dry.stdout)
    assert data["outcome"] == "dry_run"
    assert [(s["name"], s["status"]) for s in data["steps"]] == [
        ("preflight", "ok"),
        ("plan", "ok"),
    ]
    assert data["plan"]["expand"] == ["0003", "0004", "0005"]
    assert data["plan"]["contract"] == ["0006"]
    assert env.releases(kind="dry-run")[-1]["outcome"] == "dry_run"
    # Without the flag the contract revision is deferred to a later release.
    dry = env.run("release", "--image", "notes:v2", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    data = json.loads(dry.stdout)
    assert data["outcome"] == "dry_run"
    assert data["plan"]["contract"] == [] and data["plan"]["deferred"] == ["0006"]
    assert "--allow-contract" in data["plan"]["deferred_reason"]
    assert env.releases() == []  # dry runs are no releases

    # An expand revision queued behind the deferred contract (the new version may need
    # it): the release stops at plan, exit 2, one line, nothing changed.
    env.add_migration("postgres/versions", "0007_after_the_contract.py", EXPAND_AFTER_CONTRACT)
    blocked = env.run("release", "--image", "notes:v2", "--json")
    (env.root / "migrations/postgres/versions/0007_after_the_contract.py").unlink()
    assert blocked.returncode == 2, blocked.stdout + blocked.stderr
    data = json.loads(blocked.stdout)
    assert data["outcome"] == "failed"
    assert [(s["name"], s["status"]) for s in data["steps"]] == [
        ("preflight", "ok"),
        ("plan", "failed"),
    ]
    assert "0007" in data["error"] and "nothing was changed" in data["error"]
    errors = [line for line in blocked.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, blocked.stderr
    row = env.last_release()
    assert row["outcome"] == "failed"
    assert not (env.root / ".releasegate" / "backups").exists() or not any(
        (env.root / ".releasegate" / "backups").iterdir()
    )
    assert _snapshot(env) == before
    assert env.serving() == {"blue:v1": 6}

    # A Redis move without a down transform could not be carried back after promotion:
    # the plan says so and the release refuses it, exit 2, one line, nothing changed.
    env.add_migration("redis", "0001_sessions_snake_case.py", NO_DOWN_MOVE)
    refused = env.run("release", "--image", "notes:v2", "--allow-contract", "--json")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "down" in errors[0], refused.stderr
    assert json.loads(refused.stdout)["steps"][-1]["name"] == "plan"
    assert _snapshot(env) == before


EXPAND_AFTER_CONTRACT = '''"""Test: a column added after the contract revision 0006."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
releasegate_phase = "expand"


def upgrade() -> None:
    op.add_column("users", sa.Column("nickname", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "nickname")
'''

NO_DOWN_MOVE = '''"""Test: sessions move to the v2 layout with no way back."""

from releasegate.migrations.redis import KeyMove

MOVES = [KeyMove("sess:*", "sess:", "session:", up=lambda v: {"user_id": v.get("userId")})]
'''


def test_release_v2_then_v3_bad_rolls_back(release_env: ReleaseEnv, tmp_path: Path) -> None:
    env = release_env
    output, summary = tmp_path / "github_output", tmp_path / "step_summary"
    github = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
    }

    # -- v2: every gate passes, green is promoted --------------------------------------
    v2 = env.run("release", "--image", "notes:v2", "--allow-contract", env=github)
    assert v2.returncode == 0, v2.stdout + v2.stderr
    row = env.last_release()
    assert row["outcome"] == "succeeded"
    assert row["image_ref"] == "notes:v2"
    events = env.events(row["id"])
    assert [e["step"] for e in events] == ["lock", *STEPS]
    assert all(e["status"] in ("ok", "skipped") for e in events)
    assert {e["step"]: e["status"] for e in events}["watch"] == "skipped"  # watch = 0

    report = env.report(row["id"])
    assert report["outcome"] == "succeeded" and report["exit_code"] == 0
    assert report["colors"] == {"live_before": "blue", "target": "green", "live_after": "green"}
    assert [s["name"] for s in report["steps"]] == STEPS
    md = (env.root / ".releasegate" / "reports" / f"release-{row['id']}.md").read_text()
    assert f"release {row['id']}: SUCCEEDED" in md
    outputs = output.read_text()
    assert f"release-id={row['id']}\n" in outputs
    assert "outcome=succeeded\n" in outputs
    assert f"release {row['id']}: SUCCEEDED" in summary.read_text()

    assert env.weights() == {"blue": 0, "green": 100}
    assert env.serving() == {"green:v2": 6}
    assert env.container_colors() == {"green": "notes:v2"}  # blue stopped at finalize
    assert env.versions()["postgres"] == "0006"

    # -- v3-bad: the SLO gate fails; rolled back and verified --------------------------
    v3 = env.run("release", "--image", "notes:v3-bad", "--json", env=github)
    assert v3.returncode == 1, v3.stdout + v3.stderr
    data = json.loads(v3.stdout)
    assert data["outcome"] == "rolled_back"
    assert data["error"].startswith("slo gate:")
    assert data["colors"]["live_after"] == "green"
    rollback = data["rollback"]
    assert rollback["verification"]["ok"] is True
    assert rollback["ok"] is True and rollback["manual_steps"] == []
    assert env.report(data["release_id"])["rollback"]["verification"]["ok"] is True
    # The failed color's last log lines are kept in the evidence before it is removed.
    target = data["colors"]["target"]
    [stop] = [s for s in rollback["steps"] if s["name"] == f"stop {target}"]
    assert stop["detail"]["removed"] and stop["detail"]["log_tail"], stop
    row = env.last_release()
    assert row["id"] == data["release_id"] and row["outcome"] == "rolled_back"
    assert "outcome=rolled_back\n" in output.read_text()

    # The versions are the pre-release ones, and every row, key and point that existed
    # before the release is still there, unchanged (checked by content, not by counts).
    manifest = data["backup"]
    versions = env.versions()
    assert versions["postgres"] == manifest["versions"]["alembic"] == "0006"
    assert versions["redis"] == manifest["versions"]["redis"]
    assert versions["qdrant"] == manifest["versions"]["qdrant"]
    checks = rollback["verification"]["checks"]
    content = {c["item"]: c for c in checks if c["item"].startswith("content")}
    assert content and all(c["ok"] for c in content.values()), checks
    assert {"content public.users", "content public.documents"} <= set(content)
    # The gate's marked writes were deleted by the after_gate hook: nothing was added.
    assert data["slo"]["synthetic_marker"] == str(data["release_id"])
    assert data["hooks"]["after_gate"]["ok"] is True
    pg_entry = next(e for e in manifest["stores"] if e["store"] == "postgres")
    assert env.counts()["postgres"]["tables"] == pg_entry["counts"]["tables"]
    assert env.weights() == {"blue": 0, "green": 100}
    assert env.serving() == {"green:v2": 6}
    assert env.container_colors() == {"green": "notes:v2"}

    # -- the rolled-back digest is refused again unless --force -----------------------
    again = env.run("release", "--image", "notes:v3-bad", "--json")
    assert again.returncode == 1, again.stdout + again.stderr
    data = json.loads(again.stdout)
    assert data["outcome"] == "failed"
    assert "rolled back in release" in data["error"] and "--force" in data["error"]
    forced = env.run("release", "--image", "notes:v3-bad", "--force", "--dry-run", "--json")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert json.loads(forced.stdout)["outcome"] == "dry_run"
    assert env.serving() == {"green:v2": 6}
