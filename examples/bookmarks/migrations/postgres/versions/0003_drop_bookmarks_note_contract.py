"""Drop bookmarks.note (contract).

Why: the contract half of 0002. v1 reads and writes ``note``, so this may only run once
no v1 runs: releasegate holds it back until ``finalize`` (and only with
``--allow-contract``). Rows v1 wrote after 0002 have no description yet: they get their
note as description first, in the same transaction as the drop, so no text is lost and
no reader sees a row without it.

Downgrade brings ``note`` back (nullable, as 0001 made it) filled from description, so
v1 can run again.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

releasegate_phase = "contract"


def upgrade() -> None:
    op.execute(
        "UPDATE bookmarks SET description = note WHERE description IS NULL AND note IS NOT NULL"
    )
    op.drop_column("bookmarks", "note")


def downgrade() -> None:
    op.add_column("bookmarks", sa.Column("note", sa.Text, nullable=True))
    op.execute("UPDATE bookmarks SET note = description")
