"""Change digests of Qdrant points (``releasegate.stores.qdrant_points``): pure logic."""

from __future__ import annotations

import pytest

from releasegate.stores.qdrant import PointData
from releasegate.stores.qdrant_points import BucketDigest, bucket_of, buckets_for, point_hash

UUID = "5f0c3c7e-0000-4000-8000-000000000001"


def points(n: int) -> list[PointData]:
    return [PointData(i, [float(i), 0.5, -1.0], {"title": f"doc {i}"}) for i in range(1, n + 1)]


def digest_of(batch: list[PointData], buckets: int = 16) -> BucketDigest:
    digest = BucketDigest(buckets)
    digest.add_all(batch)
    return digest


def test_the_hash_sees_ids_vectors_and_payload_but_not_key_order() -> None:
    base = PointData(1, [0.5, 0.25], {"a": 1, "b": [1, 2]})
    same = PointData(1, [0.5, 0.25], {"b": [1, 2], "a": 1})
    assert point_hash(base) == point_hash(same)
    assert point_hash(base) != point_hash(PointData("1", [0.5, 0.25], base.payload))
    assert point_hash(base) != point_hash(PointData(1, [0.5, 0.26], base.payload))
    assert point_hash(base) != point_hash(PointData(1, [0.5, 0.25], {"a": 2, "b": [1, 2]}))
    named = {"s": {"indices": [1, 2], "values": [0.1, 0.2]}, "m": [[1.0], [2.0]]}
    other = {"s": {"indices": [1, 3], "values": [0.1, 0.2]}, "m": [[1.0], [2.0]]}
    assert point_hash(PointData(UUID, named)) != point_hash(PointData(UUID, other))


def test_a_bucket_depends_on_the_id_alone() -> None:
    assert bucket_of(7, 64) == bucket_of(7, 64)
    assert all(0 <= bucket_of(i, 64) < 64 for i in range(1000))
    assert len({bucket_of(i, 64) for i in range(1000)}) == 64  # every bucket used
    assert buckets_for(0) == 1 and buckets_for(100) == 2 and buckets_for(10**7) == 1024


def test_digests_differ_exactly_where_points_were_created_changed_or_deleted() -> None:
    before = points(200)
    recorded = digest_of(before)
    assert recorded.dirty(digest_of(list(reversed(before)))) == set()  # order-free

    after = [p for p in before if p.id != 7]  # deleted
    after[10] = PointData(after[10].id, after[10].vector, {"title": "renamed"})  # changed
    after.append(PointData(999, [1.0, 0.0, 0.0], {}))  # created
    expected = {bucket_of(7, 16), bucket_of(after[10].id, 16), bucket_of(999, 16)}

    assert recorded.dirty(digest_of(after)) == expected


def test_a_digest_survives_the_ledger_round_trip() -> None:
    digest = digest_of(points(50), buckets=8)
    again = BucketDigest.from_data(digest.to_data())
    assert again == digest and again.points == 50
    with pytest.raises(ValueError, match="digests of 8 and 4 buckets"):
        digest.dirty(BucketDigest(4))
    with pytest.raises(ValueError, match="holds 8 sums"):
        BucketDigest.from_data({**digest.to_data(), "buckets": 9})
