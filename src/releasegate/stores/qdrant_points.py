"""Qdrant points as plain data: encoding, comparison, sampling and change digests.

Shared by backups (:mod:`releasegate.backup.qdrant`) and migrations
(:mod:`releasegate.migrations.qdrant`), which both sit above the store:

- :func:`encode_point`/:func:`decode_point`: a point as a compact JSON line (vectors as the
  base64 of their little-endian float32 values, what Qdrant stores, so exact);
- :func:`compare_points`: whether a point read from Qdrant is the expected one, vectors
  within float32 rounding;
- :class:`Reservoir`: a uniform random sample from a stream of points;
- :class:`BucketDigest`: what a collection held, in a fixed number of buckets by point id,
  so that a later scan finds the buckets whose points were created, changed or deleted
  (Qdrant keeps no modification time).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qdrant_client import models

from releasegate.stores.qdrant import CollectionSpec, PointData, PointId, QdrantStore

# Vectors compare within float32 rounding (and Qdrant's cosine normalisation).
REL_TOL = 1e-5
ABS_TOL = 1e-6
# The most buckets a digest has: 8 bytes each, kept in a ledger event.
MAX_BUCKETS = 1024
# Points per bucket aimed at below MAX_BUCKETS.
POINTS_PER_BUCKET = 64
_MOD = 1 << 64


# -- encoding -------------------------------------------------------------------------------


def _f32(values: Sequence[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def _from_f32(text: str) -> list[float]:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 4:
        raise ValueError("float32 data of a length not divisible by 4")
    values: list[float] = np.frombuffer(raw, dtype="<f4").tolist()
    return values


def encode_point(point: PointData) -> dict[str, Any]:
    """One point as JSON-ready data (the line format of the backup points file).

    ``{"id", "dense": {VECTOR: F32}, "multi": {VECTOR: [F32, ...]}, "sparse": {VECTOR:
    {"indices", "values": F32}}, "payload"}``; the unnamed vector is ``""``, empty groups are
    left out.
    """
    line: dict[str, Any] = {"id": point.id}
    dense: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    sparse: dict[str, dict[str, Any]] = {}
    vectors: dict[str, Any] = point.vector if isinstance(point.vector, dict) else {"": point.vector}
    for name, value in vectors.items():
        if isinstance(value, dict):
            sparse[name] = {"indices": list(value["indices"]), "values": _f32(value["values"])}
        elif value and isinstance(value[0], list):
            multi[name] = [_f32(row) for row in value]
        else:
            dense[name] = _f32(value)
    if dense:
        line["dense"] = dense
    if multi:
        line["multi"] = multi
    if sparse:
        line["sparse"] = sparse
    line["payload"] = point.payload
    return line


def decode_point(line: Mapping[str, Any]) -> PointData:
    """The inverse of :func:`encode_point`; raises ValueError on a malformed line."""
    dense = line.get("dense", {})
    multi = line.get("multi", {})
    sparse = line.get("sparse", {})
    if not all(isinstance(g, dict) for g in (dense, multi, sparse)):
        raise ValueError("vector groups must be objects")
    vectors: dict[str, Any] = {name: _from_f32(v) for name, v in dense.items()}
    vectors |= {name: [_from_f32(row) for row in rows] for name, rows in multi.items()}
    for name, value in sparse.items():
        indices = [int(i) for i in value["indices"]]
        values = _from_f32(value["values"])
        if len(indices) != len(values):
            raise ValueError(
                f"sparse vector {name!r}: {len(indices)} indices, {len(values)} values"
            )
        vectors[name] = {"indices": indices, "values": values}
    vector: Any = vectors[""] if list(vectors) == [""] and "" in dense else vectors
    if "id" not in line:
        raise ValueError("a point line without an id")
    return PointData.from_dict({"id": line["id"], "vector": vector, "payload": line.get("payload")})


# -- comparing and sampling -------------------------------------------------------------------


class Reservoir:
    """A uniform random sample of ``size`` points from a stream (memory: ``size`` points)."""

    def __init__(self, size: int, rng: random.Random | None = None) -> None:
        self.size = size
        self.seen = 0
        self.points: list[PointData] = []
        self._rng = rng or random.Random()

    def offer(self, batch: Iterable[PointData]) -> None:
        for point in batch:
            self.seen += 1
            if len(self.points) < self.size:
                self.points.append(point)
            else:
                slot = self._rng.randrange(self.seen)
                if slot < self.size:
                    self.points[slot] = point


def _normalised(values: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in values))
    return [x / norm for x in values] if norm > 0 else list(values)


def _vectors_differ(expected: Any, actual: Any, cosine: bool) -> bool:
    if isinstance(expected, dict) or isinstance(actual, dict):
        if not (isinstance(expected, dict) and isinstance(actual, dict)):
            return True
        if list(expected.get("indices", [])) != list(actual.get("indices", [])):
            return True
        return _vectors_differ(expected.get("values", []), actual.get("values", []), False)
    if expected and isinstance(expected[0], list):
        return len(expected) != len(actual) or any(
            _vectors_differ(e, a, cosine) for e, a in zip(expected, actual, strict=False)
        )
    if len(expected) != len(actual):
        return True
    exp = _normalised(expected) if cosine else expected
    return not all(
        math.isclose(e, a, rel_tol=REL_TOL, abs_tol=ABS_TOL)
        for e, a in zip(exp, actual, strict=True)
    )


def compare_points(
    expected: PointData, actual: PointData | None, spec: CollectionSpec
) -> str | None:
    """Why ``actual`` (read from Qdrant) is not ``expected``, or None when they match.

    Vectors match within float32 rounding; a vector of a cosine collection is compared
    with ``expected`` normalised, as Qdrant normalises on upsert. Payloads must be equal.
    """
    if actual is None:
        return "missing"
    exp = expected.vector if isinstance(expected.vector, dict) else {"": expected.vector}
    act = actual.vector if isinstance(actual.vector, dict) else {"": actual.vector}
    if set(exp) != set(act):
        return f"vectors {sorted(act)} instead of {sorted(exp)}"
    for name, value in exp.items():
        params = spec.vectors.get(name)
        cosine = params is not None and params.distance.value == "Cosine"
        if _vectors_differ(value, act[name], cosine):
            return f"vector {name or '(default)'} differs"
    if expected.payload != actual.payload:
        keys = sorted(
            k
            for k in {*expected.payload, *actual.payload}
            if expected.payload.get(k) != actual.payload.get(k)
        )
        return f"payload differs in {', '.join(map(str, keys))}"
    return None


# -- change digests ----------------------------------------------------------------------


def point_hash(point: PointData) -> int:
    """A 64-bit hash of a point's id, vectors (as float32, what Qdrant stores) and payload."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{type(point.id).__name__}:{point.id}".encode())
    vectors: dict[str, Any] = point.vector if isinstance(point.vector, dict) else {"": point.vector}
    for name in sorted(vectors):
        value = vectors[name]
        digest.update(f"\0{name}\0".encode())
        if isinstance(value, dict):  # sparse
            digest.update(b"s" + np.asarray(value["indices"], dtype="<i8").tobytes())
            digest.update(b"v" + np.asarray(value["values"], dtype="<f4").tobytes())
        elif value and isinstance(value[0], list):  # multivector
            for row in value:
                digest.update(b"m" + np.asarray(row, dtype="<f4").tobytes())
        else:
            digest.update(b"d" + np.asarray(value, dtype="<f4").tobytes())
    digest.update(
        b"\0p" + json.dumps(point.payload, sort_keys=True, separators=(",", ":")).encode()
    )
    return int.from_bytes(digest.digest(), "little")


def bucket_of(point_id: PointId, buckets: int) -> int:
    """The bucket of a point id: depends on the id alone, never on the point's content."""
    key = f"{'i' if isinstance(point_id, int) else 'u'}{point_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % buckets


def buckets_for(points: int) -> int:
    """How many buckets a digest of a collection of ``points`` points gets."""
    return max(1, min(MAX_BUCKETS, math.ceil(points / POINTS_PER_BUCKET)))


@dataclass
class BucketDigest:
    """Per bucket of point ids, the sum (mod 2**64) of the :func:`point_hash` of its points.

    Order-free, so it is built while streaming. Two digests of one collection differ in
    exactly the buckets where a point was created, changed or deleted (short of a 64-bit
    collision). ``to_data`` is small: ``buckets`` * 8 bytes in base64.
    """

    buckets: int
    sums: list[int] = field(default_factory=list)
    points: int = 0

    def __post_init__(self) -> None:
        if not self.sums:
            self.sums = [0] * self.buckets

    def add(self, point: PointData, *, counted: bool = True) -> int:
        """Add a point, returning its bucket; ``counted=False`` when it replaces one
        already counted."""
        slot = bucket_of(point.id, self.buckets)
        self.sums[slot] = (self.sums[slot] + point_hash(point)) % _MOD
        self.points += counted
        return slot

    def add_all(self, batch: Iterable[PointData]) -> None:
        for point in batch:
            self.add(point)

    def reset(self, slots: Iterable[int]) -> None:
        """Empty these buckets (their points are about to be added again)."""
        for slot in slots:
            self.sums[slot] = 0

    def dirty(self, other: BucketDigest) -> set[int]:
        """The buckets where ``other`` (same bucket count) differs from this digest."""
        if other.buckets != self.buckets:
            raise ValueError(f"digests of {self.buckets} and {other.buckets} buckets")
        return {i for i, (a, b) in enumerate(zip(self.sums, other.sums, strict=True)) if a != b}

    def to_data(self) -> dict[str, Any]:
        raw = np.asarray(self.sums, dtype="<u8").tobytes()
        return {
            "buckets": self.buckets,
            "points": self.points,
            "sums": base64.b64encode(raw).decode("ascii"),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> BucketDigest:
        raw = base64.b64decode(str(data["sums"]).encode("ascii"), validate=True)
        sums = [int(x) for x in np.frombuffer(raw, dtype="<u8")]
        buckets = int(data["buckets"])
        if len(sums) != buckets:
            raise ValueError(f"a digest of {buckets} buckets holds {len(sums)} sums")
        return cls(buckets, sums, int(data.get("points", 0)))

    @classmethod
    def of(
        cls, store: QdrantStore, collection: str, *, batch_size: int, buckets: int | None = None
    ) -> BucketDigest:
        """The digest of a whole collection (one scroll with vectors and payload); by
        default with :func:`buckets_for` its number of points."""
        digest = cls(buckets or buckets_for(store.count(collection)))
        for batch in store.scroll_batches(collection, batch_size):
            digest.add_all(batch)
        return digest


def delete_points(store: QdrantStore, collection: str, ids: Sequence[PointId]) -> None:
    """Delete these points and wait until Qdrant has applied it."""
    if not ids:
        return
    try:
        store.client.delete(
            collection, points_selector=models.PointIdsList(points=list(ids)), wait=True
        )
    except Exception as exc:
        raise store.fail(f"deleting points of {collection}", exc) from None
