"""The Qdrant points file (the scroll backup format) and the pure helpers around it.

No Qdrant here: points are plain :class:`PointData`, written to a file in ``tmp_path`` and
read back. Values are float32-representable so that the round trip must be exact.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import sys
from pathlib import Path

import pytest
from qdrant_client import models

from releasegate.backup.qdrant_points_file import (
    FORMAT,
    FORMAT_VERSION,
    PointsWriter,
    iter_points_file,
    read_points_header,
    write_points_file,
)
from releasegate.errors import CheckFailed
from releasegate.stores.qdrant import CollectionSpec, PointData
from releasegate.stores.qdrant_points import (
    Reservoir,
    compare_points,
    decode_point,
    encode_point,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

UUID = "5f0c3c7e-0000-4000-8000-000000000001"


def sample_points() -> list[PointData]:
    """Every vector shape the format knows, int and UUID ids, nested payloads."""
    return [
        PointData(1, [0.5, -0.25, 1.0, 0.0], {"title": "über", "owner_id": 7, "tags": ["a", "b"]}),
        PointData(
            UUID,
            {
                "text": [0.125, 0.75],
                "image": [1.5, -2.0, 3.25],
                "kw": {"indices": [3, 17, 40], "values": [0.5, 0.25, 2.0]},
                "tokens": [[1.0, 2.0], [3.0, 4.0]],
            },
            {"nested": {"k": [1, {"x": None}]}, "flag": True},
        ),
        PointData(2**40, [0.0, 0.0, 0.0, 0.0], {}),
    ]


def read_all(path: Path, batch_size: int = 256) -> list[PointData]:
    return [p for batch in iter_points_file(path, batch_size) for p in batch]


def test_points_file_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    points = sample_points()

    written = write_points_file(path, "docs__v1", [points[:2], points[2:]])

    assert written == 3
    assert read_all(path) == points
    header = read_points_header(path)
    assert header == {"format": FORMAT, "format_version": FORMAT_VERSION, "collection": "docs__v1"}


def test_points_file_layout_is_header_points_trailer(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    write_points_file(path, "docs", [sample_points()])

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]

    assert lines[0]["format"] == FORMAT
    assert lines[-1] == {"end": True, "points": 3}
    first = lines[1]
    assert first["id"] == 1
    assert set(first["dense"]) == {""}  # the unnamed vector
    assert isinstance(first["dense"][""], str)  # base64 float32, not a list of floats
    second = lines[2]
    assert set(second["dense"]) == {"text", "image"}
    assert second["sparse"]["kw"]["indices"] == [3, 17, 40]
    assert len(second["multi"]["tokens"]) == 2


def test_float64_values_come_back_as_their_float32(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    value = 0.1  # not a float32: Qdrant stores it as the nearest float32 anyway
    write_points_file(path, "c", [[PointData(1, [value], {})]])

    [point] = read_all(path)

    assert isinstance(point.vector, list)
    assert point.vector[0] != value
    assert math.isclose(point.vector[0], value, rel_tol=1e-7)


def test_reading_yields_batches_of_the_requested_size(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    points = [PointData(i, [float(i)], {"i": i}) for i in range(10)]
    write_points_file(path, "c", [points])

    sizes = [len(batch) for batch in iter_points_file(path, batch_size=4)]

    assert sizes == [4, 4, 2]


def test_an_empty_collection_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    assert write_points_file(path, "c", []) == 0
    assert read_all(path) == []


def test_writer_consumes_batches_lazily(tmp_path: Path) -> None:
    """The writer pulls one batch at a time: an export never holds the whole collection."""
    pulled: list[int] = []

    def batches():  # type: ignore[no-untyped-def]
        for n in range(3):
            pulled.append(n)
            yield [PointData(n, [1.0], {})]
            # Written before the next batch is asked for.
            assert writer.points == n + 1

    with PointsWriter(tmp_path / "c.jsonl.gz", "c") as writer:
        for batch in batches():
            writer.write(batch)
    assert pulled == [0, 1, 2]


def test_a_file_without_trailer_is_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    with (
        pytest.raises(RuntimeError),
        PointsWriter(path, "c") as writer,
    ):  # an export that dies midway closes the file without the trailer
        writer.write(sample_points())
        raise RuntimeError("killed")

    with pytest.raises(CheckFailed, match="cut short"):
        read_all(path)


def test_truncated_gzip_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    write_points_file(path, "c", [[PointData(i, [float(i)] * 64, {}) for i in range(200)]])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckFailed, match=r"damaged|cut short"):
        read_all(path)


def test_trailer_count_must_match(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "collection": "c"}
    lines = [header, encode_point(PointData(1, [1.0], {})), {"end": True, "points": 2}]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)

    with pytest.raises(CheckFailed, match="trailer counts 2 points, the file has 1"):
        read_all(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"format": "something else"}, "not a releasegate Qdrant points file"),
        ({"format": FORMAT, "format_version": 99}, "format version 99"),
    ],
)
def test_foreign_or_future_files_are_refused(
    tmp_path: Path, header: dict[str, object], message: str
) -> None:
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(header) + "\n")

    with pytest.raises(CheckFailed, match=message):
        read_all(path)
    with pytest.raises(CheckFailed, match=message):
        read_points_header(path)


def test_not_gzip_at_all_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    path.write_text("plain text\n")
    with pytest.raises(CheckFailed):
        read_points_header(path)


@pytest.mark.parametrize(
    "line",
    [
        {"dense": {"": "AAAA"}},  # no id
        {"id": 1, "dense": {"": "not base64!"}},
        {"id": 1, "dense": {"": "AAA="}},  # 2 bytes: not whole float32s
        {"id": 1, "sparse": {"s": {"indices": [1, 2], "values": "AACAPw=="}}},  # 2 vs 1
        {"id": 1.5, "dense": {}},
        {"id": 1, "payload": [1, 2]},
    ],
)
def test_malformed_point_lines_are_rejected(line: dict[str, object]) -> None:
    with pytest.raises((ValueError, KeyError)):
        decode_point(line)


def test_encode_decode_point_is_identity() -> None:
    for point in sample_points():
        assert decode_point(json.loads(json.dumps(encode_point(point)))) == point


# -- sampling and comparison ------------------------------------------------------------


def test_reservoir_keeps_at_most_its_size_from_the_stream() -> None:
    reservoir = Reservoir(5, random.Random(1))
    stream = [PointData(i, [0.0], {}) for i in range(100)]
    for start in range(0, 100, 7):
        reservoir.offer(stream[start : start + 7])

    assert reservoir.seen == 100
    assert len(reservoir.points) == 5
    assert len({p.id for p in reservoir.points}) == 5
    # A uniform sample of 100 reaches past the first five points.
    assert max(int(p.id) for p in reservoir.points) >= 5


def test_reservoir_of_a_short_stream_keeps_everything() -> None:
    reservoir = Reservoir(10)
    reservoir.offer([PointData(i, [0.0], {}) for i in range(3)])
    assert [p.id for p in reservoir.points] == [0, 1, 2]


def test_reservoir_is_roughly_uniform() -> None:
    rng = random.Random(7)
    hits = [0] * 10
    for _ in range(2000):
        reservoir = Reservoir(2, rng)
        reservoir.offer([PointData(i, [0.0], {}) for i in range(10)])
        for p in reservoir.points:
            hits[int(p.id)] += 1
    # Each of 10 items is expected 400 times; the first ones must not dominate.
    assert all(300 < h < 500 for h in hits), hits


def test_compare_points_normalises_cosine_vectors() -> None:
    spec = CollectionSpec.single(2, models.Distance.COSINE)
    expected = PointData(1, [3.0, 4.0], {"a": 1})
    stored = PointData(1, [0.6, 0.8], {"a": 1})  # what Qdrant keeps for a cosine vector

    assert compare_points(expected, stored, spec) is None
    assert compare_points(expected, stored, CollectionSpec.single(2, "Dot")) == (
        "vector (default) differs"
    )


def test_compare_points_names_what_differs() -> None:
    spec = CollectionSpec.single(2, models.Distance.DOT)
    expected = PointData(1, [1.0, 2.0], {"a": 1, "b": 2})

    assert compare_points(expected, None, spec) == "missing"
    assert compare_points(expected, PointData(1, [1.0, 2.0000001], {"a": 1, "b": 2}), spec) is None
    assert "differs" in str(
        compare_points(expected, PointData(1, [1.0, 2.1], expected.payload), spec)
    )
    assert compare_points(expected, PointData(1, [1.0, 2.0], {"a": 1, "b": 3}), spec) == (
        "payload differs in b"
    )
    assert "vectors" in str(compare_points(expected, PointData(1, {"x": [1.0, 2.0]}, {}), spec))


def test_compare_points_checks_sparse_indices() -> None:
    spec = CollectionSpec({}, {"s": models.SparseVectorParams()})
    expected = PointData(1, {"s": {"indices": [1, 2], "values": [0.5, 0.5]}}, {})
    moved = PointData(1, {"s": {"indices": [1, 3], "values": [0.5, 0.5]}}, {})
    assert compare_points(expected, expected, spec) is None
    assert compare_points(expected, moved, spec) == "vector s differs"


def test_collection_spec_round_trips_through_plain_data() -> None:
    spec = CollectionSpec(
        {
            "text": models.VectorParams(size=8, distance=models.Distance.COSINE),
            "image": models.VectorParams(size=4, distance=models.Distance.DOT, on_disk=True),
        },
        {"kw": models.SparseVectorParams()},
        {
            "owner_id": "integer",
            "tag": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        },
    )

    again = CollectionSpec.from_dict(json.loads(json.dumps(spec.to_dict())))

    assert again == spec
    assert again.summary()["payload_indexes"] == {"owner_id": "integer", "tag": "keyword"}
    assert again.summary()["vectors"]["image"] == {"size": 4, "distance": "Dot"}
    assert isinstance(again.vectors_config(), dict)
    assert isinstance(CollectionSpec.single(3).vectors_config(), models.VectorParams)


# -- the example service's embedding ----------------------------------------------------


def test_example_embedding_is_deterministic_unit_and_sized() -> None:
    sys.path.insert(0, str(REPO_ROOT / "examples" / "app"))
    try:
        from notes_app.embedding import embed
    finally:
        sys.path.pop(0)

    a = embed("Quarterly budget report", 128)
    assert a == embed("Quarterly budget report", 128)
    assert len(a) == 128 and len(embed("", 7)) == 7
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-9)

    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    near = embed("quarterly budget reports", 128)
    far = embed("security hiring agenda", 128)
    assert cos(a, near) > cos(a, far)
    with pytest.raises(ValueError):
        embed("x", 0)
