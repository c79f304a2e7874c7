"""Add users.display_name and backfill it from full_name (expand).

Why: full_name is being replaced by display_name. This is the expand half: the new
column is added nullable (no table rewrite, no long lock) and filled from full_name.
The application writes both columns until 0006 drops full_name (contract).

The backfill runs in batches of BATCH_SIZE rows, each committed on its own, so no long
transaction holds row locks on users; it only touches rows still NULL, so an interrupted
run simply resumes (the column is added with IF NOT EXISTS for the same reason).

Revision ID: 0003
Revises: 0002
Create Date: 2024-02-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_SIZE = 1000

BACKFILL_BATCH = sa.text(
    "UPDATE users SET display_name = full_name "
    "WHERE id IN (SELECT id FROM users WHERE display_name IS NULL ORDER BY id LIMIT :batch)"
)


def upgrade() -> None:
    op.add_column("users", sa.Column("display_name", sa.Text, nullable=True), if_not_exists=True)

    if context.is_offline_mode():
        op.execute("UPDATE users SET display_name = full_name WHERE display_name IS NULL")
        return

    with op.get_context().autocommit_block():
        bind = op.get_bind()
        while bind.execute(BACKFILL_BATCH, {"batch": BATCH_SIZE}).rowcount:
            pass


def downgrade() -> None:
    op.drop_column("users", "display_name")
