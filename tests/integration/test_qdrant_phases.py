"""Qdrant migrations in expand/switch/contract form (``releasegate.migrations.qdrant.phases``).

A real embedded Qdrant seeded with the example's v1 ``documents`` (100 points), the
example's ``migrations/qdrant/0001`` (re-embed at 128 dimensions, ``lang`` added, a
``down_transform`` back to v1), and a fresh Postgres database for the ledger and the
release lock. The phases open the embedded storage themselves (one client at a time), so
the tests look at it between phases through :func:`opened`.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from releasegate.config import Settings
from releasegate.errors import MigrationFailed, StateError
from releasegate.ledger import Ledger, Outcome, Release, StepStatus
from releasegate.migrations.qdrant import BASE, PointData, status, up
from releasegate.migrations.qdrant.phases import (
    contract,
    expand,
    expand_problems,
    expanded_state,
    switch,
    undo,
)
from releasegate.stores.qdrant import QdrantStore, open_store
from releasegate.stores.qdrant_points import compare_points, delete_points

REPO_ROOT = Path(__file__).resolve().parents[2]
POINTS = 100

QDRANT_SECTION = """
[qdrant]
path = "qdrant-data"
migrations = "migrations/qdrant"
batch_size = 32
verify_sample = 16
"""


@pytest.fixture
def qproject(project: Any) -> Any:
    shutil.copytree(
        REPO_ROOT / "migrations" / "qdrant",
        project.root / "migrations" / "qdrant",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    project.write_config(project.config_path.read_text() + QDRANT_SECTION)
    sys.path.insert(0, str(project.root / "examples" / "app"))
    try:
        yield project
    finally:
        sys.path.remove(str(project.root / "examples" / "app"))


@pytest.fixture
def settings(qproject: Any) -> Settings:
    """The project's settings, its embedded Qdrant seeded with v1 (and closed again)."""
    from notes_app.seed_qdrant import seed_documents

    settings: Settings = qproject.settings(QDRANT_URL="")
    with open_store(settings) as store:
        seed_documents(store.client, POINTS, seed=3)
    return settings


@contextmanager
def opened(settings: Settings) -> Iterator[QdrantStore]:
    with open_store(settings) as store:
        yield store


def points(store: QdrantStore, collection: str) -> dict[Any, PointData]:
    return {p.id: p for batch in store.scroll_batches(collection, 500) for p in batch}


def v1_point(point_id: int, title: str, owner_id: int = 1) -> PointData:
    from notes_app.embedding import embed

    payload = {"document_id": point_id, "title": title, "owner_id": owner_id}
    return PointData(point_id, embed(title, 64), payload)


def v2_point(point_id: int, title: str, owner_id: int = 1) -> PointData:
    from notes_app.embedding import embed

    payload = {"document_id": point_id, "title": title, "owner_id": owner_id, "lang": "en"}
    return PointData(point_id, embed(title, 128), payload)


def last_release(qproject: Any) -> Release:
    with Ledger.open(qproject.url) as ledger:
        return ledger.releases(qproject.service, limit=1, with_events=True)[0]


def step(release: Release, name: str) -> dict[str, Any]:
    found = [e for e in release.events if e.step == name]
    assert found, f"no event {name} in {[e.step for e in release.events]}"
    assert found[-1].status == str(StepStatus.OK)
    return dict(found[-1].detail)


def write_old_version_changes(store: QdrantStore) -> None:
    """What the old version writes to v1 after the expand: one create, update, delete."""
    store.upsert("documents", [v1_point(1001, "brand new memo"), v1_point(5, "renamed plan")])
    delete_points(store, "documents", [7])


def assert_v2_holds_the_changes(store: QdrantStore) -> None:
    v2 = points(store, "documents__v2")
    spec = store.spec("documents__v2")
    assert len(v2) == POINTS  # +1 created, -1 deleted
    assert 7 not in v2
    assert compare_points(v2_point(1001, "brand new memo"), v2[1001], spec) is None
    assert compare_points(v2_point(5, "renamed plan"), v2[5], spec) is None


def _fail_transform_on(
    qproject: Any, condition: str, statement: str = 'raise RuntimeError("boom")'
) -> None:
    """Make the example migration's transform run ``statement`` when ``condition`` holds."""
    path = qproject.root / "migrations" / "qdrant" / "0001_documents_v2.py"
    text = path.read_text()
    target = (
        '    title = str(point.payload["title"])\n    return PointData(point.id, embed(title, DIM)'
    )
    assert text.count(target) == 1
    path.write_text(
        text.replace(
            target,
            f"    import os\n\n    if {condition}:\n        {statement}\n{target}",
        )
    )


# -- expand, switch, contract ---------------------------------------------------------------


def test_expand_builds_v2_and_leaves_the_alias_on_v1(settings: Settings, qproject: Any) -> None:
    with opened(settings) as store:
        v1_before = points(store, "documents__v1")

    result = expand(settings)

    assert (result.before, result.after) == (BASE, BASE)
    assert result.migrations == ["0001"]
    assert result.counts["copied"] == POINTS
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v1"}
        assert store.count("documents__v2") == POINTS
        assert store.spec("documents__v2").summary()["vectors"][""]["size"] == 128
        assert points(store, "documents__v1") == v1_before
        assert status(settings, store=store).version == BASE
    release = last_release(qproject)
    assert (release.outcome, release.qdrant_before, release.qdrant_after) == (
        str(Outcome.SUCCEEDED),
        BASE,
        BASE,
    )
    detail = step(release, "qdrant expand 0001")
    assert detail["digest"]["points"] == POINTS and detail["alias_target"] == "documents__v1"
    state = expanded_state(settings)
    assert state is not None
    assert [m["version"] for m in state["expanded"]] == ["0001"] and state["switched"] == []
    assert state["expanded"][0]["recorded"] == "qdrant expand 0001"
    assert state["expanded"][0]["alias_target"] == "documents__v1"

    again = expand(settings)  # idempotent: nothing copied twice, nothing recorded

    assert again.release_id is None and again.migrations == []
    assert "0001 already expanded into documents__v2" in again.notes
    assert last_release(qproject).id == release.id


def test_writes_after_expand_are_caught_up_at_switch_and_contract_drops_v1(
    settings: Settings, qproject: Any
) -> None:
    expand(settings)
    with opened(settings) as store:
        write_old_version_changes(store)

    result = switch(settings)

    assert (result.before, result.after) == (BASE, "0001")
    assert result.counts == {"caught_up": 3, "created": 1, "updated": 1, "deleted": 1}
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v2"}
        assert_v2_holds_the_changes(store)
        assert store.exists("documents__v1")  # kept until contract
    detail = step(last_release(qproject), "qdrant switch 0001")
    assert detail["caught_up"]["created"] == 1 and detail["new_digest"]["points"] == POINTS
    state = expanded_state(settings)
    assert state is not None and [m["version"] for m in state["switched"]] == ["0001"]
    assert switch(settings).release_id is None  # nothing expanded any more

    dropped = contract(settings)

    assert dropped.counts == {"dropped": 1} and dropped.migrations == ["0001"]
    with opened(settings) as store:
        assert not store.exists("documents__v1")
        assert store.aliases() == {"documents": "documents__v2"}
        assert status(settings, store=store).version == "0001"
    assert expanded_state(settings) is None
    assert contract(settings).release_id is None


def test_writes_during_the_expand_copy_are_caught_up(settings: Settings, qproject: Any) -> None:
    """The old version writes while the expand copies: a point already copied changes, one
    is deleted, one is created. The digest holds what was read, so nothing is lost."""
    path = qproject.root / "migrations" / "qdrant" / "0001_documents_v2.py"
    text = path.read_text()
    target = "        transform=reembed,\n"
    assert text.count(target) == 1
    path.write_text(
        text.replace(target, "        transform=writing_meanwhile(ctx),\n")
        + """

def writing_meanwhile(ctx):
    from releasegate.stores.qdrant_points import delete_points

    def transform(point):
        if point.id == 50:  # points 1..32 are copied by now
            ctx.store.upsert(ctx.old, [PointData(5, embed("renamed plan", 64), {
                "document_id": 5, "title": "renamed plan", "owner_id": 1})])
            ctx.store.upsert(ctx.old, [PointData(1001, embed("brand new memo", 64), {
                "document_id": 1001, "title": "brand new memo", "owner_id": 1})])
            delete_points(ctx.store, ctx.old, [7])
        return reembed(point)

    return transform
"""
    )

    expanded = expand(settings)

    # The count differed (7 was copied, then deleted): verify caught up and passed.
    assert (expanded.counts["updated"], expanded.counts["deleted"]) == (1, 1)
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v1"}
        assert_v2_holds_the_changes(store)
    switched = switch(settings)
    assert switched.counts["caught_up"] == 0 and switched.after == "0001"


def test_migrate_up_after_an_expand_catches_up_instead_of_copying(
    settings: Settings, qproject: Any
) -> None:
    expand(settings)
    with opened(settings) as store:
        write_old_version_changes(store)

    result = up(settings)

    detail = result.steps[0].detail
    caught_up = detail["caught_up"]
    assert (caught_up["created"], caught_up["updated"], caught_up["deleted"]) == (1, 1, 1)
    assert 1 <= caught_up["dirty_buckets"] <= 2  # 100 points: two buckets of ids
    assert "copied" not in detail
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v2"}
        assert_v2_holds_the_changes(store)


# -- undo -----------------------------------------------------------------------------------


def test_undo_before_promotion_drops_v2(settings: Settings, qproject: Any) -> None:
    with opened(settings) as store:
        v1_before = points(store, "documents__v1")
    expand(settings)

    result = undo(settings, promoted=False)

    assert result.counts == {"dropped": 1} and result.after == BASE
    with opened(settings) as store:
        assert not store.exists("documents__v2")
        assert store.aliases() == {"documents": "documents__v1"}
        assert points(store, "documents__v1") == v1_before
    step(last_release(qproject), "qdrant undo 0001")
    assert expanded_state(settings) is None
    assert undo(settings, promoted=False).release_id is None


def test_undo_after_promotion_carries_the_new_versions_writes_back(
    settings: Settings, qproject: Any
) -> None:
    expand(settings)
    switch(settings)
    with opened(settings) as store:  # the new version writes through the alias
        store.upsert("documents", [v2_point(2001, "fresh agenda"), v2_point(3, "retitled")])
        delete_points(store, "documents", [9])

    result = undo(settings, promoted=True)

    assert result.counts == {"carried_back": 3, "dropped": 1}
    assert (result.before, result.after) == ("0001", BASE)
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v1"}
        assert not store.exists("documents__v2")
        v1 = points(store, "documents__v1")
        spec = store.spec("documents__v1")
        assert len(v1) == POINTS and 9 not in v1
        assert compare_points(v1_point(2001, "fresh agenda"), v1[2001], spec) is None
        assert (
            compare_points(v1_point(3, "retitled", v1[3].payload["owner_id"]), v1[3], spec) is None
        )
    detail = step(last_release(qproject), "qdrant carry back 0001")
    assert (detail["created"], detail["updated"], detail["deleted"]) == (1, 1, 1)


def test_undo_after_promotion_without_a_down_transform_keeps_the_alias(
    settings: Settings, qproject: Any
) -> None:
    path = qproject.root / "migrations" / "qdrant" / "0001_documents_v2.py"
    path.write_text(path.read_text().replace("def down_transform(", "def _unused_down("))
    expand(settings)
    switch(settings)

    result = undo(settings, promoted=True)

    assert any(
        "has no down_transform: the alias documents stays on documents__v2" in n
        for n in result.notes
    )
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v2"}
        assert store.exists("documents__v1") and store.exists("documents__v2")


# -- interruptions --------------------------------------------------------------------------


@pytest.mark.parametrize("crash", ["error", "killed"])
def test_an_interrupted_switch_resumes(
    settings: Settings, qproject: Any, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    """The transform fails on the created point during the catch-up: the alias stays on
    v1; the next switch catches up everything (writes already made are idempotent)."""
    statement = 'raise RuntimeError("boom")' if crash == "error" else "raise SystemExit(9)"
    _fail_transform_on(qproject, 'str(point.id) == os.environ.get("RG_TEST_FAIL_ID")', statement)
    expand(settings)
    with opened(settings) as store:
        write_old_version_changes(store)
    monkeypatch.setenv("RG_TEST_FAIL_ID", "1001")

    if crash == "error":
        with pytest.raises(MigrationFailed, match="still points at documents__v1"):
            switch(settings)
    else:
        with pytest.raises(SystemExit):
            switch(settings)
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v1"}
        assert 1001 not in points(store, "documents__v2")
    state = expanded_state(settings)
    assert state is not None and [m["version"] for m in state["expanded"]] == ["0001"]

    monkeypatch.delenv("RG_TEST_FAIL_ID")
    result = switch(settings)

    # Point 5 (an earlier batch) was caught up before the failure; 7 was not yet deleted.
    assert result.counts == {"caught_up": 2, "created": 1, "updated": 0, "deleted": 1}
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v2"}
        assert_v2_holds_the_changes(store)


def test_an_interrupted_expand_resumes_and_compares_what_it_cannot_vouch_for(
    settings: Settings, qproject: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest of a copy cut short is lost with the process: the resumed expand
    compares every point instead, so a change made meanwhile is still caught."""
    _fail_transform_on(
        qproject, "point.id > int(os.environ.get('RG_TEST_FAIL_AFTER', '1000000000'))"
    )
    monkeypatch.setenv("RG_TEST_FAIL_AFTER", "70")
    with pytest.raises(MigrationFailed, match="the next run resumes the copy"):
        expand(settings)
    with opened(settings) as store:
        assert store.count("documents__v2") == 64  # two whole batches of 32
        write_old_version_changes(store)  # 5 and 7 were copied already
    monkeypatch.delenv("RG_TEST_FAIL_AFTER")

    result = expand(settings)

    assert result.counts["copied"] == POINTS - 64 + 1 + 1  # from point 64 on, plus 1001
    assert (result.counts["updated"], result.counts["deleted"]) == (1, 1)
    with opened(settings) as store:
        assert store.aliases() == {"documents": "documents__v1"}
        assert_v2_holds_the_changes(store)
    switch(settings)
    with opened(settings) as store:
        assert_v2_holds_the_changes(store)


def test_a_switch_that_died_after_moving_the_alias_is_recorded_on_rerun(
    settings: Settings, qproject: Any
) -> None:
    expand(settings)
    with opened(settings) as store:  # the alias moved, then the process died
        store.set_aliases({"documents": "documents__v2"})

    result = switch(settings)

    assert any("already pointed at documents__v2" in n for n in result.notes)
    assert step(last_release(qproject), "qdrant switch 0001")["recovered"] is True
    assert contract(settings).counts == {"dropped": 1}


# -- what cannot run in expand form ---------------------------------------------------------


def test_expand_problems(settings: Settings, qproject: Any) -> None:
    assert expand_problems(settings) == []
    folder = qproject.root / "migrations" / "qdrant"
    (folder / "0002_paused.py").write_text(
        "collection = 'documents'\nexpand = False\n\n"
        "def up(ctx):\n    pass\n\ndef down(ctx):\n    pass\n"
    )

    problems = expand_problems(settings)

    assert any("0002 (0002_paused.py) sets expand = False" in p for p in problems)
    assert any("0001 and 0002 both change documents" in p for p in problems)
    with pytest.raises(StateError, match="expand = False"):
        expand(settings)
    with opened(settings) as store:
        assert not store.exists("documents__v2")
