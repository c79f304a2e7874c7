"""Qdrant migration copy throughput: copy + transform of a collection, by batch size.

Runs the real copy path of a Qdrant migration (``MigrationContext.create_new`` + ``copy``
+ ``verify`` from :mod:`releasegate.migrations.qdrant.context`) on an embedded Qdrant:

1. seeds ``bench__v1`` with ``--points`` points of ``--dim`` dimensions (cosine) and a
   small payload;
2. copies all of them into ``bench__v2`` with each of ``--batch-sizes`` through a
   transform (the vector rescaled, the payload gains a key), then verifies;
3. copies the first ``--subset`` points with a batch size of 1 (one scroll and one upsert
   per point) and compares the per-point rates;
4. with ``--disk-points N`` also copies N points on a storage folder on disk rather
   than tmpfs: the embedded Qdrant commits every point to SQLite, so on disk the fsyncs
   bound the rate whatever the batch size.

The storage goes to ``/dev/shm`` when it exists (``--dir`` to choose). Prints figures;
asserts nothing. Example::

    .venv/bin/python benchmarks/qdrant_copy.py --points 100000 --dim 384
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np

from releasegate.migrations.qdrant import MigrationContext, QdrantMigration
from releasegate.stores.qdrant import CollectionSpec, PointData, QdrantStore, connect


def seed(store: QdrantStore, n: int, dim: int, batch: int = 1000) -> float:
    """``bench__v1`` with ``n`` random unit vectors; returns seconds taken."""
    started = time.perf_counter()
    store.create_collection("bench__v1", CollectionSpec.single(dim, "Cosine"))
    rng = np.random.default_rng(0)
    for start in range(1, n + 1, batch):
        ids = range(start, min(start + batch, n + 1))
        vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.upsert(
            "bench__v1",
            [
                PointData(
                    i, v.tolist(), {"document_id": i, "title": f"doc {i}", "owner_id": i % 50}
                )
                for i, v in zip(ids, vectors, strict=True)
            ],
        )
    store.set_aliases({"bench": "bench__v1"})
    return time.perf_counter() - started


def transform(point: PointData) -> PointData:
    """What a schema migration does to each point: a new vector, a payload key more."""
    assert isinstance(point.vector, list)
    return PointData(point.id, [x * 0.5 for x in point.vector], {**point.payload, "lang": "en"})


def context(store: QdrantStore, step: int, batch_size: int) -> MigrationContext:
    """A context for ``bench__v{step}`` -> ``bench__v{step + 1}``, as the engine makes one."""
    migration = QdrantMigration(
        version=f"{step:04d}",
        name="bench",
        collection="bench",
        step=step,
        doc="benchmark",
        path=Path("bench.py"),
        module=ModuleType("bench"),
    )
    return MigrationContext(store, migration, batch_size=batch_size, verify_sample=32)


def copy_rate(
    store: QdrantStore, batch_size: int, limit: int | None, step: int = 1
) -> tuple[int, float, float]:
    """(points copied, copy seconds, verify seconds or nan) into a fresh new collection."""
    ctx = context(store, step, batch_size)
    if store.exists(ctx.new):
        store.drop_collection(ctx.new)
    ctx.create_new(ctx.new_spec())
    started = time.perf_counter()
    copied = ctx.copy(transform, limit=limit)
    took = time.perf_counter() - started
    verify_s = float("nan")
    if limit is None:
        started = time.perf_counter()
        ctx.verify(transform)
        verify_s = time.perf_counter() - started
    store.drop_collection(ctx.new)
    return copied, took, verify_s


def run(folder: Path, points: int, dim: int, batches: list[int], subset: int) -> None:
    store = connect(path=folder / "qdrant")
    try:
        took = seed(store, points, dim)
        print(
            f"seed      {points:>7} points, dim {dim}: {took:7.1f} s"
            f"  ({points / took:8.0f} points/s)"
        )
        rates = {}
        for batch in batches:
            copied, copy_s, verify_s = copy_rate(store, batch, None)
            rates[batch] = copied / copy_s
            print(
                f"copy      batch {batch:>5}: {copied:>7} points in {copy_s:7.1f} s"
                f"  ({rates[batch]:8.0f} points/s); verify {verify_s:.1f} s"
            )
        copied1, copy1_s, _ = copy_rate(store, 1, subset)
        one = copied1 / copy1_s
        print(
            f"copy      batch     1: {copied1:>7} points in {copy1_s:7.1f} s"
            f"  ({one:8.1f} points/s, first {subset} points of the same collection)"
        )
        for batch, rate in rates.items():
            print(f"ratio     batch {batch} / batch 1 per-point rate: {rate / one:.0f}x")
    finally:
        store.close()


def run_disk(points: int, dim: int, batch: int) -> None:
    with tempfile.TemporaryDirectory(prefix="rgbench-qdrant-", dir=Path.home()) as tmp:
        store = connect(path=Path(tmp) / "qdrant")
        try:
            took = seed(store, points, dim)
            copied, copy_s, _ = copy_rate(store, batch, points)
            print(
                f"disk      seed {points / took:8.0f} points/s; copy batch {batch}:"
                f" {copied / copy_s:8.0f} points/s ({copied} points, fsync per point)"
            )
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument(
        "--batch-sizes", default="256,1024", help="comma-separated batch sizes to compare"
    )
    parser.add_argument("--subset", type=int, default=200, help="points copied with batch 1")
    parser.add_argument("--disk-points", type=int, default=0, help="also copy N points on disk")
    parser.add_argument("--dir", type=Path, default=None, help="where the storage goes")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    # The embedded Qdrant warns past 20,000 points; the figures say what that costs.
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    base = args.dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    folder = Path(tempfile.mkdtemp(prefix="rgbench-qdrant-", dir=base))
    print(f"embedded Qdrant in {folder} (python {sys.version.split()[0]})")
    try:
        run(folder, args.points, args.dim, batches, args.subset)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.disk_points:
        run_disk(args.disk_points, args.dim, batches[0])


if __name__ == "__main__":
    main()
