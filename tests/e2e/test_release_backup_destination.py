"""A release whose backup destination cannot be reached stops before it changes anything.

The backup step comes before migrate: when the set cannot be kept at its destination
(here an S3 endpoint on a closed port), the release fails at ``backup`` with nothing to
roll back, blue v1 still serving and the stores at their versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from release_env import ReleaseEnv, ensure_images, open_release_env

pytestmark = pytest.mark.slow


@pytest.fixture
def release_env(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[ReleaseEnv]:
    ensure_images()
    with open_release_env(tmp_path / "project", pg_url, redis_url) as env:
        yield env


def test_unreachable_destination_stops_the_release_before_any_change(
    release_env: ReleaseEnv,
) -> None:
    env = release_env
    closed = f"http://127.0.0.1:{free_port()}"
    result = env.run(
        "release",
        "--image",
        "notes:v2",
        "--allow-contract",
        "--json",
        env={
            "RELEASEGATE_BACKUP__DESTINATION": "s3://rg-releases/notes",
            "RELEASEGATE_BACKUP__ENDPOINT_URL_ENV": "RG_S3_ENDPOINT",
            "RG_S3_ENDPOINT": closed,
            "AWS_ACCESS_KEY_ID": "rg-test-key",
            "AWS_SECRET_ACCESS_KEY": "rg-test-secret-value",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "rg-test-secret-value" not in result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["outcome"] == "failed" and "rollback" not in data
    assert data["error"].startswith("backup: backup destination s3://rg-releases/notes/")
    assert "nothing was changed" in data["error"]
    steps = {e["step"]: e["status"] for e in env.events(data["release_id"])}
    assert steps["backup"] == "failed" and "migrate" not in steps
    assert env.versions()["postgres"] == "0002"
    assert env.serving() == {"blue:v1": 6}
    assert env.container_colors() == {"blue": "notes:v1"}
    backups = env.root / ".releasegate" / "backups"
    assert not backups.exists() or list(backups.iterdir()) == []
