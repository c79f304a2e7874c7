"""How ledger rows read in ``history`` and ``status``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from releasegate.ledger import Release
from releasegate.ledger.views import (
    HISTORY_HEADERS,
    duration_text,
    history_row,
    image_text,
    one_line,
    versions_text,
)

STARTED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def row(**overrides: Any) -> Release:
    fields: dict[str, Any] = {
        "id": 12,
        "service": "notes",
        "kind": "release",
        "git_sha": None,
        "image_ref": None,
        "image_digest": None,
        "performer": "ci",
        "started_at": STARTED,
        "finished_at": None,
        "outcome": "running",
        "alembic_before": None,
        "alembic_after": None,
        "redis_before": None,
        "redis_after": None,
        "qdrant_before": None,
        "qdrant_after": None,
        "summary": {},
    }
    return Release(**{**fields, **overrides})


def test_versions_before_and_after_of_every_store_the_row_knows() -> None:
    assert versions_text(row()) == ""
    assert versions_text(row(alembic_before="0001", alembic_after="0003")) == (
        "alembic 0001 -> 0003"
    )
    assert versions_text(row(alembic_before="0001")) == "alembic 0001 -> ?"
    assert versions_text(row(alembic_before="0003", alembic_after="0003", redis_after="2")) == (
        "alembic 0003 (unchanged); redis ? -> 2"
    )


def test_duration_and_image() -> None:
    assert duration_text(row()) == ""
    assert duration_text(row(finished_at=STARTED + timedelta(seconds=41.24))) == "41.2s"
    assert duration_text(row(finished_at=STARTED + timedelta(seconds=245))) == "4m05s"
    assert image_text(row()) == ""
    assert image_text(row(image_digest="sha256:ab")) == "sha256:ab"
    assert image_text(row(image_ref="notes:v2", image_digest="sha256:ab")) == "notes:v2"


def test_one_release_one_line() -> None:
    release = row(
        outcome="succeeded",
        image_ref="notes:v2",
        alembic_before="0001",
        alembic_after="0003",
        finished_at=STARTED + timedelta(seconds=3),
    )
    assert one_line(release) == (
        "#12 release succeeded: notes:v2, alembic 0001 -> 0003, 3.0s at 2026-03-04 05:06:07 by ci"
    )
    assert one_line(row(kind="migrate")) == "#12 migrate running at 2026-03-04 05:06:07 by ci"
    cells = history_row(release)
    assert len(cells) == len(HISTORY_HEADERS)
    assert dict(zip(HISTORY_HEADERS, cells, strict=True)) == {
        "id": "12",
        "service": "notes",
        "kind": "release",
        "started": "2026-03-04 05:06:07",
        "took": "3.0s",
        "outcome": "succeeded",
        "image": "notes:v2",
        "versions": "alembic 0001 -> 0003",
        "performer": "ci",
    }
    assert history_row(release, depth=1)[0] == "  12"
