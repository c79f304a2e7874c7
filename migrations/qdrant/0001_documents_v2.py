"""Re-embed documents at 128 dimensions from their titles, index owner_id, add lang."""

from __future__ import annotations

from notes_app.embedding import embed
from qdrant_client import models

from releasegate.migrations.qdrant import MigrationContext, PointData

collection = "documents"

DIM = 128
V1_DIM = 64


def reembed(point: PointData) -> PointData:
    """v1 point -> v2 point: a 128-dimension vector of the title, payload gains lang."""
    title = str(point.payload["title"])
    return PointData(point.id, embed(title, DIM), {**point.payload, "lang": "en"})


def down_transform(point: PointData) -> PointData:
    """v2 point -> v1 point: carries writes made after the switch back on undo."""
    title = str(point.payload["title"])
    payload = {k: v for k, v in point.payload.items() if k != "lang"}
    return PointData(point.id, embed(title, V1_DIM), payload)


def up(ctx: MigrationContext) -> None:
    ctx.rebuild(
        vectors=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        payload_indexes={"owner_id": models.PayloadSchemaType.INTEGER},
        transform=reembed,
    )


def down(ctx: MigrationContext) -> None:
    # documents__v1 is untouched by up(): moving the alias back is the whole undo. The v2
    # collection is dropped; a later up() builds it again from v1.
    ctx.drop_new = True
