"""Index document_chunks.vector_id, concurrently.

Why: the vector store returns point ids and the service maps them back to chunks;
without an index that lookup scans document_chunks. The table is large and busy, so the
index is built with CREATE INDEX CONCURRENTLY, which cannot run inside a transaction:
hence the autocommit block.

A concurrent build that is interrupted leaves an INVALID index behind under the same
name, which would make a retry fail; dropping it first (IF EXISTS, also concurrently)
makes the revision safe to re-run. (IF NOT EXISTS on the build is then redundant; it
is there for squawk's prefer-robust-stmts, which cannot see the drop.)

Revision ID: 0004
Revises: 0003
Create Date: 2024-02-12 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX_NAME = "ix_document_chunks_vector_id"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            INDEX_NAME,
            table_name="document_chunks",
            if_exists=True,
            postgresql_concurrently=True,
        )
        op.create_index(
            INDEX_NAME,
            "document_chunks",
            ["vector_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            INDEX_NAME,
            table_name="document_chunks",
            if_exists=True,
            postgresql_concurrently=True,
        )
