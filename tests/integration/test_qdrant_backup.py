"""Qdrant restore points against a real Qdrant: the embedded one, and a server if there is one.

The embedded Qdrant (qdrant-client's ``path=`` mode) is the real Qdrant API here: every
test builds collections with named dense, sparse and multi vectors, payload indexes and an
alias, backs them up with :mod:`releasegate.backup.qdrant`, and restores or verifies them
into a second storage folder. The snapshot tests need a server: they run when
``QDRANT_URL`` names a reachable one and are skipped otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import models

from releasegate.backup import qdrant as qbackup
from releasegate.backup import qdrant_entry, qdrant_points_file
from releasegate.backup.base import StoreBackup
from releasegate.config import Settings, load_config
from releasegate.errors import CheckFailed, ExitCode, InfraError, StateError
from releasegate.stores import qdrant_points
from releasegate.stores.qdrant import (
    CollectionSpec,
    PointData,
    QdrantStore,
    connect,
    open_store,
)

CONFIG = """\
[service]
name = "qbackup"

[qdrant]
path = "{path}"
collections = {collections}
batch_size = 16
verify_sample = {sample}
"""

DOCS_SPEC = CollectionSpec(
    {
        "text": models.VectorParams(size=8, distance=models.Distance.COSINE),
        "image": models.VectorParams(size=4, distance=models.Distance.DOT),
        "tokens": models.VectorParams(
            size=2,
            distance=models.Distance.EUCLID,
            multivector_config=models.MultiVectorConfig(
                comparator=models.MultiVectorComparator.MAX_SIM
            ),
        ),
    },
    {"kw": models.SparseVectorParams()},
    {
        "owner_id": models.PayloadSchemaType.INTEGER,
        "tag": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD),
    },
)
PLAIN_SPEC = CollectionSpec.single(6, models.Distance.EUCLID)
DOCS_POINTS = 45
PLAIN_POINTS = 20


def make_settings(
    root: Path, storage: Path, collections: list[str] | None = None, sample: int = 1000
) -> Settings:
    config = root / f"releasegate-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        CONFIG.format(
            path=storage.as_posix(),
            collections="[" + ", ".join(f'"{c}"' for c in collections or []) + "]",
            sample=sample,
        )
    )
    return load_config(config, env={})


def docs_point(i: int) -> PointData:
    point_id: int | str = i if i % 3 else str(uuid.UUID(int=i + 1))
    return PointData(
        point_id,
        {
            "text": [float((i * 7 + k) % 11) - 5 for k in range(8)],
            "image": [i / 8, -i / 4, 0.5, 1.0],
            "kw": {"indices": [i % 5, 10 + i], "values": [0.5, i / 16]},
            "tokens": [[float(i), 1.0], [2.0, float(-i)]],
        },
        {"owner_id": i % 4, "tag": f"t{i % 3}", "title": f"doc {i} ✓", "meta": {"n": [i, None]}},
    )


def populate(store: QdrantStore) -> None:
    """docs__v1 (aliased as docs) and plain (no alias), with points."""
    store.create_collection("docs__v1", DOCS_SPEC)
    store.upsert("docs__v1", [docs_point(i) for i in range(DOCS_POINTS)])
    store.create_collection("plain", PLAIN_SPEC)
    store.upsert("plain", [PointData(i, [float(i)] * 6, {"i": i}) for i in range(PLAIN_POINTS)])
    store.set_aliases({"docs": "docs__v1"})


def all_points(store: QdrantStore, collection: str) -> dict[object, PointData]:
    return {p.id: p for batch in store.scroll_batches(collection, 100) for p in batch}


@pytest.fixture
def source(tmp_path: Path, qdrant_path: Path) -> Iterator[tuple[Settings, QdrantStore]]:
    """Settings on a populated embedded Qdrant, and the one client open on it."""
    settings = make_settings(tmp_path, qdrant_path)
    with open_store(settings) as store:
        populate(store)
        yield settings, store


@pytest.fixture
def backed_up(
    source: tuple[Settings, QdrantStore], tmp_path: Path
) -> tuple[Settings, QdrantStore, Path, StoreBackup]:
    settings, store = source
    set_dir = tmp_path / "set"
    entry = qbackup.backup(settings, set_dir, store=store)
    return settings, store, set_dir, entry


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Settings, QdrantStore]]:
    """A second, empty embedded Qdrant to restore into."""
    settings = make_settings(tmp_path, tmp_path / "target")
    with open_store(settings) as store:
        yield settings, store


# -- counts and backup -----------------------------------------------------------------


def test_counts_cover_points_vectors_indexes_and_aliases(
    source: tuple[Settings, QdrantStore],
) -> None:
    settings, store = source

    found = qbackup.counts(settings, store=store)

    assert found["aliases"] == {"docs": "docs__v1"}
    docs = found["collections"]["docs__v1"]
    assert docs["points"] == DOCS_POINTS
    assert docs["vectors"] == {
        "image": {"size": 4, "distance": "Dot"},
        "text": {"size": 8, "distance": "Cosine"},
        "tokens": {"size": 2, "distance": "Euclid"},
    }
    assert docs["sparse_vectors"] == ["kw"]
    assert docs["payload_indexes"] == {"owner_id": "integer", "tag": "keyword"}
    assert found["collections"]["plain"]["vectors"] == {"": {"size": 6, "distance": "Euclid"}}


def test_configured_collections_resolve_aliases_and_report_missing(
    source: tuple[Settings, QdrantStore], tmp_path: Path, qdrant_path: Path
) -> None:
    _, store = source
    settings = make_settings(tmp_path, qdrant_path, ["docs", "nope"])

    found = qbackup.counts(settings, store=store)

    assert list(found["collections"]) == ["docs__v1"]
    assert found["aliases"] == {"docs": "docs__v1"}
    assert found["missing"] == ["nope"]


def test_embedded_backup_is_a_scroll_export_with_config_in_extra(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
) -> None:
    _, _, set_dir, entry = backed_up

    assert entry.store == "qdrant"
    assert entry.method == qdrant_entry.METHOD_SCROLL
    assert sorted(f.name for f in entry.files) == [
        "qdrant/docs__v1.jsonl.gz",
        "qdrant/plain.jsonl.gz",
    ]
    for f in entry.files:
        assert (set_dir / f.name).stat().st_size == f.size
    assert entry.counts["collections"]["docs__v1"]["points"] == DOCS_POINTS
    assert entry.extra["aliases"] == {"docs": "docs__v1"}
    assert CollectionSpec.from_dict(entry.extra["collections"]["docs__v1"]) == DOCS_SPEC
    assert entry.extra["format_version"] == qdrant_points_file.FORMAT_VERSION
    # No migrations folder in this project: no version to record, and no failure either.
    assert entry.versions == {}
    # The entry survives the manifest's JSON.
    assert StoreBackup.from_dict(entry.to_dict()) == entry


def test_backup_opens_and_closes_its_own_client(
    source: tuple[Settings, QdrantStore], tmp_path: Path
) -> None:
    """Without store=, backup opens the storage itself: it must close it after."""
    settings, store = source
    store.close()  # free the storage folder

    entry = qbackup.backup(settings, tmp_path / "set")

    with open_store(settings) as again:  # would fail if backup had left its client open
        assert again.count("docs__v1") == DOCS_POINTS
    assert entry.counts["collections"]["plain"]["points"] == PLAIN_POINTS


# -- restore ------------------------------------------------------------------------------


def test_restore_round_trip_into_an_empty_qdrant(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
    target: tuple[Settings, QdrantStore],
) -> None:
    _, store, set_dir, entry = backed_up
    target_settings, target_store = target

    result = qbackup.restore(target_settings, set_dir, entry, store=target_store)

    assert result == {
        "collections": {"docs__v1": DOCS_POINTS, "plain": PLAIN_POINTS},
        "aliases": {"docs": "docs__v1"},
    }
    assert target_store.aliases() == {"docs": "docs__v1"}
    assert target_store.spec("docs__v1") == DOCS_SPEC
    assert qbackup.counts(target_settings, store=target_store) == qbackup.counts(
        target_settings, store=store
    )
    for collection in ("docs__v1", "plain"):
        original, restored = all_points(store, collection), all_points(target_store, collection)
        assert restored.keys() == original.keys()
        spec = store.spec(collection)
        for point_id, point in original.items():
            assert qdrant_points.compare_points(point, restored[point_id], spec) is None


def test_restore_refuses_a_non_empty_target_unless_forced(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
) -> None:
    settings, store, set_dir, entry = backed_up
    store.upsert("plain", [PointData(999, [9.0] * 6, {"extra": True})])

    with pytest.raises(StateError, match="not empty: docs__v1 has 45 points") as info:
        qbackup.restore(settings, set_dir, entry, store=store)
    assert info.value.exit_code == ExitCode.CHECK_FAILED
    assert store.count("plain") == PLAIN_POINTS + 1  # untouched

    qbackup.restore(settings, set_dir, entry, store=store, force=True)

    assert store.count("plain") == PLAIN_POINTS
    assert store.retrieve("plain", [999]) == {}
    assert store.aliases() == {"docs": "docs__v1"}


def test_restore_into_empty_existing_collections_needs_no_force(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup], target: tuple[Settings, QdrantStore]
) -> None:
    _, _, set_dir, entry = backed_up
    target_settings, target_store = target
    target_store.create_collection("plain", CollectionSpec.single(2))  # empty, other config

    qbackup.restore(target_settings, set_dir, entry, store=target_store)

    assert target_store.spec("plain") == PLAIN_SPEC
    assert target_store.count("plain") == PLAIN_POINTS


def test_a_corrupt_file_restores_nothing(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
    target: tuple[Settings, QdrantStore],
) -> None:
    _, _, set_dir, entry = backed_up
    target_settings, target_store = target
    damaged = set_dir / "qdrant" / "plain.jsonl.gz"  # the second file: the first is fine
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    with pytest.raises(CheckFailed, match=r"damaged, nothing restored: .*plain.jsonl.gz sha256"):
        qbackup.restore(target_settings, set_dir, entry, store=target_store)

    assert target_store.collections() == []
    assert target_store.aliases() == {}


def test_a_missing_file_restores_nothing(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
    target: tuple[Settings, QdrantStore],
) -> None:
    _, _, set_dir, entry = backed_up
    target_settings, target_store = target
    (set_dir / "qdrant" / "docs__v1.jsonl.gz").unlink()

    with pytest.raises(CheckFailed, match="missing"):
        qbackup.restore(target_settings, set_dir, entry, store=target_store)
    assert target_store.collections() == []


# -- verify -------------------------------------------------------------------------------


def test_verify_passes_and_leaves_no_scratch_collection(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
) -> None:
    settings, store, set_dir, entry = backed_up
    before = store.collections()

    assert qbackup.verify(settings, set_dir, entry, store=store) == []

    assert store.collections() == before
    assert store.aliases() == {"docs": "docs__v1"}


def test_verify_reports_a_count_that_does_not_match(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
) -> None:
    settings, store, set_dir, entry = backed_up
    entry.counts["collections"]["plain"]["points"] = PLAIN_POINTS + 1

    found = qbackup.verify(settings, set_dir, entry, store=store)

    assert [(d.item, d.expected, d.actual) for d in found] == [
        ("points plain", PLAIN_POINTS + 1, PLAIN_POINTS)
    ]
    assert not any(qdrant_entry.is_scratch(c) for c in store.collections())


def test_verify_reports_a_damaged_file_and_checks_the_others(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
) -> None:
    settings, store, set_dir, entry = backed_up
    (set_dir / "qdrant" / "docs__v1.jsonl.gz").write_bytes(b"garbage")

    found = qbackup.verify(settings, set_dir, entry, store=store)

    assert [d.item for d in found] == ["file qdrant/docs__v1.jsonl.gz sha256"]
    assert "qdrant: file qdrant/docs__v1.jsonl.gz sha256: expected" in found[0].describe()


def test_verify_allows_for_cosine_normalisation(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
) -> None:
    """Qdrant normalises cosine vectors on upsert: a file holding non-unit vectors (here
    rewritten, with a fresh checksum) restores to unit vectors, which must still match."""
    settings, store, set_dir, entry = backed_up
    path = set_dir / "qdrant" / "docs__v1.jsonl.gz"
    points = [p for batch in qdrant_points_file.iter_points_file(path) for p in batch]
    for p in points:
        assert isinstance(p.vector, dict)
        p.vector["text"] = [x * 3 for x in p.vector["text"]]
    qdrant_points_file.write_points_file(path, "docs__v1", [points])
    entry.files = [
        f if f.name != "qdrant/docs__v1.jsonl.gz" else type(f).of(set_dir, path)
        for f in entry.files
    ]

    assert qbackup.verify(settings, set_dir, entry, store=store) == []


def test_sample_comparison_finds_changed_and_missing_points(
    source: tuple[Settings, QdrantStore],
) -> None:
    _, store = source
    expected = [docs_point(i) for i in (1, 2, 4)]
    assert qbackup.compare_sample(store, "docs__v1", expected, DOCS_SPEC) == []

    expected[0].payload["title"] = "changed"
    assert isinstance(expected[1].vector, dict)
    expected[1].vector["image"] = [0.0, 0.0, 0.0, 1.0]
    expected[2].id = 10_000

    found = qbackup.compare_sample(store, "docs__v1", expected, DOCS_SPEC)

    assert [(p.id, why) for p, why in found] == [
        (1, "payload differs in title"),
        (2, "vector image differs"),
        (10_000, "missing"),
    ]


def test_verify_reports_a_restore_that_qdrant_refuses(
    backed_up: tuple[Settings, QdrantStore, Path, StoreBackup],
) -> None:
    """The config in the entry and the file disagree (6-dim points, 5-dim collection)."""
    settings, store, set_dir, entry = backed_up
    entry.extra["collections"]["plain"]["vectors"][""]["size"] = 5

    found = qbackup.verify(settings, set_dir, entry, store=store)

    assert [d.item for d in found] == ["restore of plain"]
    assert "writing points" in str(found[0].actual)
    assert not any(qdrant_entry.is_scratch(c) for c in store.collections())


def test_a_missing_collection_is_a_state_error(source: tuple[Settings, QdrantStore]) -> None:
    _, store = source
    with pytest.raises(StateError, match=r"counting points of nope failed"):
        store.count("nope")


# -- connecting ----------------------------------------------------------------------------


def test_a_storage_folder_admits_one_client(
    source: tuple[Settings, QdrantStore], qdrant_path: Path
) -> None:
    with pytest.raises(InfraError, match="cannot open embedded Qdrant") as info:
        connect(path=qdrant_path)
    assert info.value.exit_code == ExitCode.INFRA


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_an_unreachable_server_is_an_infra_error_without_secrets() -> None:
    with pytest.raises(InfraError) as info:
        connect(url="http://admin:s3cret-pw@127.0.0.1:9/", api_key="key-123456", timeout=2)
    message = str(info.value)
    assert "cannot reach Qdrant at http://admin:***@127.0.0.1:9/" in message
    assert "s3cret-pw" not in message and "key-123456" not in message


def test_settings_without_url_or_path_are_a_config_error(tmp_path: Path) -> None:
    from releasegate.errors import ConfigError

    config = tmp_path / "r.toml"
    config.write_text('[service]\nname = "x"\n\n[qdrant]\n')
    settings = load_config(config, env={})
    with pytest.raises(ConfigError, match="QDRANT_URL"):
        qbackup.counts(settings)


# -- a Qdrant server: the snapshot API -----------------------------------------------------


def _server() -> tuple[str, str | None]:
    url = os.environ.get("QDRANT_URL")
    if not url:
        pytest.skip("QDRANT_URL is not set: the snapshot API needs a Qdrant server")
    api_key = os.environ.get("QDRANT_API_KEY")
    try:
        connect(url=url, api_key=api_key, timeout=5).close()
    except InfraError as exc:
        pytest.skip(f"QDRANT_URL is set but the server does not answer: {exc}")
    return url, api_key


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Settings, QdrantStore]]:
    url, api_key = _server()
    prefix = f"rgtest{uuid.uuid4().hex[:6]}"
    config = tmp_path / "server.toml"
    config.write_text(
        f'[service]\nname = "qbackup"\n\n[qdrant]\ncollections = ["{prefix}_docs",'
        f' "{prefix}_plain"]\nbatch_size = 16\nverify_sample = 1000\n'
    )
    env = {"QDRANT_URL": url, **({"QDRANT_API_KEY": api_key} if api_key else {})}
    settings = load_config(config, env=env)
    with open_store(settings) as store:
        store.create_collection(f"{prefix}_docs__v1", DOCS_SPEC)
        store.upsert(f"{prefix}_docs__v1", [docs_point(i) for i in range(DOCS_POINTS)])
        store.create_collection(f"{prefix}_plain", PLAIN_SPEC)
        store.upsert(f"{prefix}_plain", [PointData(i, [1.0] * 6, {}) for i in range(5)])
        store.set_aliases({f"{prefix}_docs": f"{prefix}_docs__v1"})
        try:
            yield settings, store
        finally:
            for name in store.collections():
                if name.startswith(prefix):
                    store.drop_collection(name)


def test_server_snapshot_backup_verify_and_restore(
    server: tuple[Settings, QdrantStore], tmp_path: Path
) -> None:
    settings, store = server
    [docs, plain] = settings.raw.qdrant.collections if settings.raw.qdrant else []

    entry = qbackup.backup(settings, tmp_path / "set", store=store)

    assert entry.method == qdrant_entry.METHOD_SNAPSHOT
    assert all(f.name.endswith(".snapshot") and f.size > 0 for f in entry.files)
    assert entry.counts["collections"][f"{docs}__v1"]["points"] == DOCS_POINTS
    # The remote snapshots were deleted after the download.
    assert store.client.list_snapshots(f"{docs}__v1") == []
    assert qbackup.verify(settings, tmp_path / "set", entry, store=store) == []

    store.upsert(plain, [PointData(99, [2.0] * 6, {})])
    with pytest.raises(StateError, match="not empty"):
        qbackup.restore(settings, tmp_path / "set", entry, store=store)
    qbackup.restore(settings, tmp_path / "set", entry, store=store, force=True)
    assert store.count(plain) == 5
    assert store.aliases()[docs] == f"{docs}__v1"
    assert store.spec(f"{docs}__v1").summary() == DOCS_SPEC.summary()
