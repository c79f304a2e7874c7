"""Create the bookmarks table.

Why: the service's first table. v1 keeps a bookmark's free text in ``note``.

Revision ID: 0001
Revises:
Create Date: 2025-01-06 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bookmarks",
        # BIGSERIAL: a bigint filled from the table's own sequence.
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_bookmarks"),
    )


def downgrade() -> None:
    op.drop_table("bookmarks")
