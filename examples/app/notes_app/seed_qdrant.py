"""Deterministic Qdrant seed data for the example service, for tests, demos and benchmarks.

:func:`seed_documents` creates the v1 layout of the ``documents`` vector collection:
``documents__v1`` (vectors of 64 dimensions, cosine) behind the alias ``documents``, one
point per document with payload ``{"document_id": int, "title": str, "owner_id": int}``
and the title's :func:`~notes_app.embedding.embed` as its vector.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from qdrant_client import QdrantClient, models

from notes_app.embedding import embed

COLLECTION = "documents"
V1 = "documents__v1"
V1_DIM = 64

_ADJECTIVES = ["quarterly", "draft", "final", "shared", "private", "archived", "urgent", "team"]
_NOUNS = ["report", "notes", "plan", "invoice", "summary", "review", "agenda", "proposal"]
_TOPICS = ["budget", "roadmap", "hiring", "release", "security", "pricing", "support", "design"]


def document(document_id: int, rng: random.Random) -> tuple[str, int]:
    """A (title, owner_id) pair drawn from ``rng``."""
    title = f"{rng.choice(_ADJECTIVES)} {rng.choice(_TOPICS)} {rng.choice(_NOUNS)} {document_id}"
    return title, rng.randint(1, 50)


def points(n: int, *, seed: int = 0, dim: int = V1_DIM) -> Iterator[models.PointStruct]:
    """The ``n`` seed points, ids 1..n, the same for the same ``seed`` and ``dim``."""
    rng = random.Random(seed)
    for document_id in range(1, n + 1):
        title, owner_id = document(document_id, rng)
        yield models.PointStruct(
            id=document_id,
            vector=embed(title, dim),
            payload={"document_id": document_id, "title": title, "owner_id": owner_id},
        )


def seed_documents(
    client: QdrantClient,
    n: int,
    *,
    seed: int = 0,
    dim: int = V1_DIM,
    batch_size: int = 512,
) -> str:
    """Create ``documents__v1`` with ``n`` points and point the alias ``documents`` at it.

    Fails if ``documents__v1`` exists. Returns the physical collection name.
    """
    client.create_collection(
        V1, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
    )
    batch: list[models.PointStruct] = []
    for point in points(n, seed=seed, dim=dim):
        batch.append(point)
        if len(batch) >= batch_size:
            client.upsert(V1, points=batch, wait=True)
            batch = []
    if batch:
        client.upsert(V1, points=batch, wait=True)
    client.update_collection_aliases(
        change_aliases_operations=[
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=V1, alias_name=COLLECTION)
            )
        ]
    )
    return V1
