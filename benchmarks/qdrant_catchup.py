"""Qdrant expand/switch: what the change digest costs and what the catch-up saves.

On an embedded Qdrant (``/dev/shm`` when it exists), with ``--points`` points of
``--dim`` dimensions in ``bench__v1``, runs the real code of
:mod:`releasegate.migrations.qdrant` and prints, in one run:

1. the copy of ``migrate up`` (no digest) against the copy of an expand (which hashes
   every point into a :class:`~releasegate.stores.qdrant_points.BucketDigest`);
2. the digest scan alone: what a switch pays to find changes when nothing changed;
3. the catch-up of ``--changes`` points (a third created, updated, deleted each) through
   the digest, against a full compare of every point (what a switch without a recorded
   digest, or a resumed expand, does);
4. the size of the digest as the ledger stores it.

Prints figures; asserts nothing. Example::

    .venv/bin/python benchmarks/qdrant_catchup.py --points 100000 --dim 384 --changes 10,1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np

from releasegate.migrations.qdrant import MigrationContext, Mode, QdrantMigration
from releasegate.migrations.qdrant.catchup import reconcile
from releasegate.stores.qdrant import CollectionSpec, PointData, QdrantStore, connect
from releasegate.stores.qdrant_points import BucketDigest, delete_points, point_hash


def seed(store: QdrantStore, n: int, dim: int, batch: int = 1000) -> None:
    store.create_collection("bench__v1", CollectionSpec.single(dim, "Cosine"))
    rng = np.random.default_rng(0)
    for start in range(1, n + 1, batch):
        ids = range(start, min(start + batch, n + 1))
        vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
        store.upsert(
            "bench__v1",
            [
                PointData(i, v.tolist(), {"document_id": i, "title": f"doc {i}"})
                for i, v in zip(ids, vectors, strict=True)
            ],
        )
    store.set_aliases({"bench": "bench__v1"})


def transform(point: PointData) -> PointData:
    assert isinstance(point.vector, list)
    return PointData(point.id, [x * 0.5 for x in point.vector], {**point.payload, "lang": "en"})


def context(store: QdrantStore, mode: Mode, batch_size: int) -> MigrationContext:
    migration = QdrantMigration(
        version="0001",
        name="bench",
        collection="bench",
        step=1,
        doc="benchmark",
        path=Path("bench.py"),
        module=ModuleType("bench"),
    )
    return MigrationContext(store, migration, batch_size=batch_size, verify_sample=32, mode=mode)


def timed_copy(store: QdrantStore, mode: Mode, batch_size: int) -> tuple[float, MigrationContext]:
    ctx = context(store, mode, batch_size)
    if store.exists(ctx.new):
        store.drop_collection(ctx.new)
    ctx.create_new(ctx.new_spec())
    started = time.perf_counter()
    ctx.copy(transform)
    return time.perf_counter() - started, ctx


def change(store: QdrantStore, n: int, dim: int, first_new_id: int, base: int) -> int:
    """A third of ``n`` created, updated and deleted in ``bench__v1``, existing ids from
    ``base`` on; returns the next unused existing id."""
    third = max(1, n // 3)
    rng = np.random.default_rng(first_new_id)
    vectors = rng.standard_normal((2 * third, dim), dtype=np.float32).tolist()
    created = [PointData(first_new_id + i, vectors[i], {"title": "new"}) for i in range(third)]
    updated = [
        PointData(base + 2 * i, vectors[third + i], {"title": "changed"}) for i in range(third)
    ]
    store.upsert("bench__v1", created + updated)
    delete_points(store, "bench__v1", [base + 2 * i + 1 for i in range(third)])
    return base + 2 * third


def run(folder: Path, points: int, dim: int, batch: int, changes: list[int]) -> None:
    store = connect(path=folder / "qdrant")
    try:
        seed(store, points, dim)
        plain_s, _ = timed_copy(store, Mode.BUILD, batch)
        digest_s, ctx = timed_copy(store, Mode.EXPAND, batch)
        assert ctx.digest is not None
        print(
            f"copy          {points} points, dim {dim}: migrate up {plain_s:6.1f} s,"
            f" expand (with digest) {digest_s:6.1f} s ({(digest_s / plain_s - 1) * 100:+.0f}%)"
        )
        sample = [p for batch in store.scroll_batches("bench__v1", 1000, limit=5000) for p in batch]
        started = time.perf_counter()
        for point in sample:
            point_hash(point)
        per_point = (time.perf_counter() - started) / len(sample) * 1e6
        print(f"hashing       {per_point:6.1f} us per point (CPU only, dim {dim})")
        stored = json.dumps(ctx.digest.to_data())
        print(f"digest        {ctx.digest.buckets} buckets, {len(stored)} bytes in the ledger")
        started = time.perf_counter()
        BucketDigest.of(store, "bench__v1", batch_size=batch, buckets=ctx.digest.buckets)
        print(f"digest scan   {time.perf_counter() - started:6.1f} s (a switch with nothing to do)")
        since = ctx.digest
        next_id = points + 1
        cursor = 1
        for n in changes:
            cursor = change(store, n, dim, next_id, cursor)
            next_id += n
            started = time.perf_counter()
            done = reconcile(
                store, "bench__v1", "bench__v2", transform, since=since, batch_size=batch
            )
            took = time.perf_counter() - started
            since = done.digest
            print(
                f"catch-up      {n:>6} changes: {took:6.1f} s via the digest"
                f" ({done.dirty_buckets}/{since.buckets} buckets;"
                f" +{done.created} ~{done.updated} -{done.deleted})"
            )
            cursor = change(store, n, dim, next_id, cursor)
            next_id += n
            started = time.perf_counter()
            full = reconcile(
                store, "bench__v1", "bench__v2", transform, since=None, batch_size=batch
            )
            took = time.perf_counter() - started
            since = full.digest
            print(
                f"full compare  {n:>6} changes: {took:6.1f} s, every point transformed"
                f" (+{full.created} ~{full.updated} -{full.deleted})"
            )
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--changes", default="10,1000", help="comma-separated change counts")
    parser.add_argument("--dir", type=Path, default=None, help="where the storage goes")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    base = args.dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    folder = Path(tempfile.mkdtemp(prefix="rgbench-qdrant-", dir=base))
    print(f"embedded Qdrant in {folder} (python {sys.version.split()[0]})")
    try:
        changes = [int(c) for c in args.changes.split(",")]
        run(folder, args.points, args.dim, args.batch_size, changes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
