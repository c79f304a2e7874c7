"""Add bookmarks.description (expand).

Why: ``description`` replaces ``note``. This is the expand half: a nullable column, added
without a table rewrite, that v1 never reads. v2 writes both columns and reads
``coalesce(description, note)``, so v1 and v2 run side by side on this schema. 0003
drops ``note`` (contract) once v1 is gone.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What the SQL shows too; declared so the release plan never has to guess.
releasegate_phase = "expand"


def upgrade() -> None:
    op.add_column("bookmarks", sa.Column("description", sa.Text, nullable=True))


def downgrade() -> None:
    # Nothing is lost: every writer at this revision also fills note.
    op.drop_column("bookmarks", "description")
