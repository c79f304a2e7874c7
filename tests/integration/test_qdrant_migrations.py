"""Qdrant migrations (``releasegate.migrations.qdrant``) on a real embedded Qdrant.

Each test gets the example project (with its ``migrations/qdrant``) in a temporary folder,
an embedded Qdrant seeded with the v1 ``documents`` collection by the example's own
``seed_documents``, and a fresh Postgres database for the ledger and the release lock.
Tests that need a failing or interrupted migration replace ``0001`` with their own module.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import models

from releasegate.config import Settings
from releasegate.errors import ExitCode, MigrationFailed, MigrationScriptError, StateError
from releasegate.ledger import Ledger, Outcome, Release, StepStatus
from releasegate.migrations.qdrant import (
    BASE,
    CollectionSpec,
    Direction,
    QdrantStepResult,
    bootstrap_collection,
    down,
    status,
    up,
)
from releasegate.stores.qdrant import PointData, QdrantStore, open_store

REPO_ROOT = Path(__file__).resolve().parents[2]
POINTS = 100

QDRANT_SECTION = """
[qdrant]
path = "qdrant-data"
migrations = "migrations/qdrant"
batch_size = 32
verify_sample = 16
"""

# A copy of the example migration with a transform the test chooses.
CUSTOM_MIGRATION = '''\
"""A documents migration written by the test."""

import os

from notes_app.embedding import embed
from qdrant_client import models

from releasegate.migrations.qdrant import PointData

collection = "documents"


def transform(point):
{body}


def up(ctx):
    ctx.rebuild(
        vectors=models.VectorParams(size=128, distance=models.Distance.COSINE),
        payload_indexes={{"owner_id": models.PayloadSchemaType.INTEGER}},
        transform=transform,
    )


def down(ctx):
    ctx.drop_new = True
'''

GOOD_TRANSFORM = """\
    return PointData(point.id, embed(point.payload["title"], 128), {**point.payload, "lang": "en"})
"""


@pytest.fixture
def qproject(project: Any) -> Any:
    """The example project with a [qdrant] section and its Qdrant migrations."""
    shutil.copytree(
        REPO_ROOT / "migrations" / "qdrant",
        project.root / "migrations" / "qdrant",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    project.write_config(project.config_path.read_text() + QDRANT_SECTION)
    return project


@pytest.fixture
def settings(qproject: Any) -> Settings:
    settings: Settings = qproject.settings(QDRANT_URL="")
    return settings


@pytest.fixture
def store(settings: Settings, qproject: Any) -> Iterator[QdrantStore]:
    """The one client on the project's embedded Qdrant, seeded with v1."""
    import sys

    sys.path.insert(0, str(qproject.root / "examples" / "app"))
    try:
        from notes_app.seed_qdrant import seed_documents
    finally:
        sys.path.pop(0)
    with open_store(settings) as store:
        seed_documents(store.client, POINTS, seed=3)
        yield store


def write_migration(qproject: Any, transform_body: str) -> None:
    path = qproject.root / "migrations" / "qdrant" / "0001_documents_v2.py"
    body = textwrap.indent(textwrap.dedent(transform_body).rstrip(), "    ")
    path.write_text(CUSTOM_MIGRATION.format(body=body))


def snapshot(store: QdrantStore, collection: str) -> dict[Any, PointData]:
    """Every point of a collection, by id."""
    return {p.id: p for batch in store.scroll_batches(collection, 500) for p in batch}


def releases(qproject: Any) -> list[Release]:
    with Ledger.open(qproject.url) as ledger:
        return list(reversed(ledger.releases(qproject.service, limit=50, with_events=True)))


def events(release: Release, status_: StepStatus | None = None) -> dict[str, dict[str, Any]]:
    return {
        e.step: e.detail
        for e in release.events
        if e.step != "lock" and (status_ is None or e.status == status_)
    }


# -- status, up, down -----------------------------------------------------------------------


def test_status_of_a_fresh_v1(settings: Settings, store: QdrantStore) -> None:
    found = status(settings, store=store)

    assert found.version == BASE
    assert [m.version for m in found.pending] == ["0001"]
    assert found.pending[0].to_dict()["from"] == "documents__v1"
    assert found.pending[0].to_dict()["to"] == "documents__v2"
    assert found.ok
    assert found.to_dict()["collections"][0]["physical"] == "documents__v1"


def test_up_moves_the_alias_to_v2_and_down_moves_it_back(
    settings: Settings, store: QdrantStore, qproject: Any
) -> None:
    from notes_app.embedding import embed

    v1_before = snapshot(store, "documents__v1")
    seen: list[QdrantStepResult] = []

    result = up(settings, on_step=seen.append, store=store)

    assert store.aliases() == {"documents": "documents__v2"}
    spec = store.spec("documents__v2")
    assert spec.summary()["vectors"] == {"": {"size": 128, "distance": "Cosine"}}
    assert spec.summary()["payload_indexes"] == {"owner_id": "integer"}
    assert store.count("documents") == POINTS
    v2 = snapshot(store, "documents__v2")
    for point_id, old in list(v1_before.items())[:20]:
        new = v2[point_id]
        assert new.payload == {**old.payload, "lang": "en"}
        expected = PointData(point_id, embed(old.payload["title"], 128), new.payload)
        from releasegate.stores.qdrant_points import compare_points

        assert compare_points(expected, new, spec) is None
    assert snapshot(store, "documents__v1") == v1_before  # only ever read
    assert [s.version for s in seen] == ["0001"]
    assert seen[0].status is StepStatus.OK and seen[0].alias_target == "documents__v2"
    assert result.before == BASE and result.after == "0001"
    assert result.to_dict()["steps"][0]["detail"]["copied"] == POINTS
    assert status(settings, store=store).version == "0001"
    assert status(settings, store=store).pending == []

    # Ledger: one migrate release with the Qdrant versions and one event per migration.
    release = releases(qproject)[-1]
    assert (release.kind, release.outcome) == ("migrate", str(Outcome.SUCCEEDED))
    assert (release.qdrant_before, release.qdrant_after) == (BASE, "0001")
    assert release.summary["store"] == "qdrant"
    step = events(release, StepStatus.OK)["qdrant upgrade 0001"]
    assert step["points_old"] == step["points_new"] == POINTS
    assert step["verified_sample"] == 16
    upgrade = next(e for e in release.events if e.step == "qdrant upgrade 0001")
    assert upgrade.duration_ms is not None and upgrade.duration_ms > 0

    # Again: nothing to do, but still recorded.
    assert up(settings, store=store).steps == []

    back = down(settings, BASE, store=store)

    assert store.aliases() == {"documents": "documents__v1"}
    assert not store.exists("documents__v2")  # the example's down drops it
    assert snapshot(store, "documents__v1") == v1_before
    assert [(s.direction, s.alias_target) for s in back.steps] == [
        (Direction.DOWN, "documents__v1")
    ]
    assert (back.before, back.after) == ("0001", BASE)
    release = releases(qproject)[-1]
    assert (release.qdrant_before, release.qdrant_after) == ("0001", BASE)
    assert events(release, StepStatus.OK)["qdrant downgrade 0001"]["dropped_new"] is True


def test_up_opens_its_own_client_when_none_is_passed(
    settings: Settings, store: QdrantStore
) -> None:
    store.close()  # free the embedded storage for up()

    up(settings, to="0001")

    with open_store(settings) as again:
        assert again.aliases() == {"documents": "documents__v2"}


def test_down_needs_the_old_collection(settings: Settings, store: QdrantStore) -> None:
    up(settings, store=store)
    store.drop_collection("documents__v1")

    with pytest.raises(MigrationFailed, match="documents__v1 no longer exists"):
        down(settings, BASE, store=store)
    assert store.aliases() == {"documents": "documents__v2"}


# -- failed verification --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        # Corrupts a payload field the old collection had.
        (
            "    payload = {**point.payload, 'owner_id': str(point.payload['owner_id'])}\n"
            "    return PointData(point.id, embed(payload['title'], 128), payload)\n",
            "payload keys changed or lost: owner_id",
        ),
        # Drops every tenth point.
        (
            "if point.id % 10 == 0:\n    return None\n" + textwrap.dedent(GOOD_TRANSFORM),
            "documents__v2 has 90 points, documents__v1 has 100",
        ),
        # Not deterministic: what verify recomputes is not what was written.
        (
            "    import random\n"
            "    return PointData(point.id, [random.random() for _ in range(128)],"
            ' {**point.payload, "lang": "en"})\n',
            "vector (default) differs",
        ),
    ],
    ids=["corrupt-payload", "dropped-points", "unstable-vectors"],
)
def test_a_migration_that_fails_verification_changes_nothing(
    settings: Settings, store: QdrantStore, qproject: Any, body: str, why: str
) -> None:
    write_migration(qproject, body)
    v1_before = snapshot(store, "documents__v1")

    with pytest.raises(MigrationFailed, match="still points at documents__v1") as info:
        up(settings, store=store)

    assert why in str(info.value)
    assert info.value.exit_code == ExitCode.CHECK_FAILED
    assert store.aliases() == {"documents": "documents__v1"}
    assert snapshot(store, "documents__v1") == v1_before
    assert store.spec("documents__v1").summary()["vectors"][""]["size"] == 64
    assert not store.exists("documents__v2")  # known wrong: dropped, never resumed from
    release = releases(qproject)[-1]
    assert release.outcome == str(Outcome.FAILED)
    assert (release.qdrant_before, release.qdrant_after) == (BASE, BASE)
    failed = events(release, StepStatus.FAILED)["qdrant upgrade 0001"]
    assert failed["phase"] == "verify"
    assert failed["dropped_new"] is True
    assert "VerificationFailed" in failed["error"]
    assert status(settings, store=store).version == BASE


def test_a_transform_may_not_change_ids(
    settings: Settings, store: QdrantStore, qproject: Any
) -> None:
    write_migration(
        qproject,
        '    return PointData(point.id + 1000, embed(point.payload["title"], 128), point.payload)',
    )
    with pytest.raises(MigrationFailed, match="changed point id 1 into 1001"):
        up(settings, store=store)
    assert store.aliases() == {"documents": "documents__v1"}
    assert not store.exists("documents__v2")


# -- interruption and resume ----------------------------------------------------------------


@pytest.mark.parametrize("crash", ["error", "killed"])
def test_an_interrupted_copy_resumes_where_it_stopped(
    settings: Settings,
    store: QdrantStore,
    qproject: Any,
    monkeypatch: pytest.MonkeyPatch,
    crash: str,
) -> None:
    """An error is recorded as a failed copy; a killed process (SystemExit here: nothing
    gets recorded after it) leaves only the "copy started" event. Both resume."""
    statement = 'raise RuntimeError("boom")' if crash == "error" else "raise SystemExit(9)"
    write_migration(
        qproject,
        'if point.id > int(os.environ.get("RG_TEST_FAIL_AFTER", "1000000")):\n'
        f"    {statement}\n" + textwrap.dedent(GOOD_TRANSFORM),
    )
    monkeypatch.setenv("RG_TEST_FAIL_AFTER", "70")
    v1_before = snapshot(store, "documents__v1")

    if crash == "error":
        with pytest.raises(MigrationFailed, match="kept and the next run resumes the copy"):
            up(settings, store=store)
    else:
        with pytest.raises(SystemExit):
            up(settings, store=store)

    assert store.aliases() == {"documents": "documents__v1"}
    assert snapshot(store, "documents__v1") == v1_before
    partial = store.count("documents__v2")
    assert partial == 64  # the two whole batches of 32 before point 71
    release = releases(qproject)[-1]
    if crash == "error":
        assert events(release, StepStatus.FAILED)["qdrant upgrade 0001"]["phase"] == "copy"
    else:
        # Left "running" by the crash; nobody holds the lock, so it is shown interrupted.
        assert release.outcome == str(Outcome.INTERRUPTED)
        assert list(events(release)) == ["qdrant copy 0001"]

    monkeypatch.delenv("RG_TEST_FAIL_AFTER")
    result = up(settings, store=store)

    detail = result.steps[0].detail
    assert detail["resumed_from_points"] == partial
    # It went on after the last copied point (re-writing that one), not from the start.
    assert detail["copied"] == POINTS - partial + 1
    assert store.aliases() == {"documents": "documents__v2"}
    assert store.count("documents__v2") == POINTS
    v2 = snapshot(store, "documents__v2")
    assert all(p.payload["lang"] == "en" for p in v2.values())
    assert set(v2) == set(v1_before)

    # Idempotent: a further run has nothing to do.
    assert up(settings, store=store).steps == []


def test_a_leftover_from_a_down_is_rebuilt_not_resumed(
    settings: Settings, store: QdrantStore, qproject: Any
) -> None:
    """After up + down (keeping v2) + writes to v1, a new up copies everything again."""
    path = qproject.root / "migrations" / "qdrant" / "0001_documents_v2.py"
    path.write_text(path.read_text().replace("ctx.drop_new = True", "ctx.drop_new = False"))
    up(settings, store=store)
    down(settings, BASE, store=store)
    assert store.exists("documents__v2")
    assert status(settings, store=store).collections[0].leftovers == ["documents__v2"]
    store.upsert(
        "documents__v1",
        [PointData(1, [1.0] + [0.0] * 63, {"document_id": 1, "title": "renamed", "owner_id": 1})],
    )

    result = up(settings, store=store)

    assert result.steps[0].detail["dropped_leftover"] is True
    assert result.steps[0].detail["copied"] == POINTS
    assert store.retrieve("documents", [1])[1].payload["title"] == "renamed"


# -- states the engine refuses --------------------------------------------------------------


def test_a_logical_collection_that_does_not_exist_needs_a_bootstrap(
    settings: Settings, qproject: Any
) -> None:
    with open_store(settings) as store:
        found = status(settings, store=store)
        assert "documents does not exist" in found.problems[0]
        with pytest.raises(StateError, match="bootstrap_collection"):
            up(settings, store=store)

        spec = CollectionSpec.single(64, models.Distance.COSINE)
        assert bootstrap_collection(store, "documents", spec) == "documents__v1"
        assert bootstrap_collection(store, "documents", spec) == "documents__v1"  # idempotent
        assert store.aliases() == {"documents": "documents__v1"}
        assert status(settings, store=store).ok


def test_a_plain_collection_is_not_migrated(settings: Settings, qproject: Any) -> None:
    with open_store(settings) as store:
        store.create_collection("documents", CollectionSpec.single(64))
        assert "is a collection, not an alias" in status(settings, store=store).problems[0]
        with pytest.raises(StateError, match="not an alias"):
            bootstrap_collection(store, "documents", CollectionSpec.single(64))


def test_qdrant_ahead_of_the_code_is_refused(settings: Settings, store: QdrantStore) -> None:
    store.create_collection("documents__v3", CollectionSpec.single(8))
    store.set_aliases({"documents": "documents__v3"})

    found = status(settings, store=store)

    assert not found.ok
    assert "ahead of the code" in found.problems[0]
    with pytest.raises(StateError, match="ahead of the code"):
        down(settings, BASE, store=store)


def test_broken_migration_modules_are_config_errors(settings: Settings, qproject: Any) -> None:
    folder = qproject.root / "migrations" / "qdrant"
    (folder / "0002_no_collection.py").write_text("def up(ctx): pass\ndef down(ctx): pass\n")
    with pytest.raises(MigrationScriptError, match="must set collection") as info:
        status(settings)
    assert info.value.exit_code == ExitCode.USAGE

    (folder / "0002_no_collection.py").write_text("collection = 'documents'\ndef up(ctx): pass\n")
    with pytest.raises(MigrationScriptError, match=r"has no down\(ctx\)"):
        status(settings)

    (folder / "0002_no_collection.py").unlink()
    (folder / "0002_other.py").write_text("collection = 'documents'\nraise ImportError('nope')")
    with pytest.raises(MigrationScriptError, match="ImportError: nope"):
        status(settings)


def test_up_that_does_not_verify_never_swaps(
    settings: Settings, store: QdrantStore, qproject: Any
) -> None:
    path = qproject.root / "migrations" / "qdrant" / "0001_documents_v2.py"
    path.write_text(
        "collection = 'documents'\n\n"
        "def up(ctx):\n"
        "    ctx.create_new(ctx.new_spec())\n"
        "    ctx.copy()\n\n"
        "def down(ctx):\n"
        "    pass\n"
    )
    with pytest.raises(MigrationFailed, match="did not verify documents__v2"):
        up(settings, store=store)
    assert store.aliases() == {"documents": "documents__v1"}


def test_a_backup_carries_the_applied_version(
    settings: Settings, store: QdrantStore, tmp_path: Path
) -> None:
    """The version lives in the alias map, so restoring a backup restores the version."""
    from releasegate.backup import qdrant as qbackup

    up(settings, store=store)
    entry = qbackup.backup(settings, tmp_path / "set", store=store)
    assert entry.versions == {"qdrant_migrations": "0001"}
    assert entry.counts["aliases"] == {"documents": "documents__v2"}

    down(settings, BASE, store=store)
    assert status(settings, store=store).version == BASE
    qbackup.restore(settings, tmp_path / "set", entry, store=store, force=True)

    assert status(settings, store=store).version == "0001"
    assert store.spec("documents").summary()["payload_indexes"] == {"owner_id": "integer"}
