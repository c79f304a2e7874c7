"""Drop users.full_name (contract).

Why: the contract half of 0003. Every running version of the service reads and writes
display_name only, so full_name is dead weight.

Downgrade restores the column exactly as it was at 0005 (text NOT NULL): it is added
nullable, filled from display_name in batches committed one by one (like 0003, and
resumable the same way), and only then marked NOT NULL. Users created after 0006 may
have no display_name; they get an empty full_name, which keeps NOT NULL satisfiable
(and the batch loop finite).

Revision ID: 0006
Revises: 0005
Create Date: 2024-03-18 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_SIZE = 1000

RESTORE_BATCH = sa.text(
    "UPDATE users SET full_name = coalesce(display_name, '') "
    "WHERE id IN (SELECT id FROM users WHERE full_name IS NULL ORDER BY id LIMIT :batch)"
)


def upgrade() -> None:
    op.drop_column("users", "full_name")


def downgrade() -> None:
    op.add_column("users", sa.Column("full_name", sa.Text, nullable=True), if_not_exists=True)

    if context.is_offline_mode():
        op.execute(
            "UPDATE users SET full_name = coalesce(display_name, '') WHERE full_name IS NULL"
        )
    else:
        with op.get_context().autocommit_block():
            bind = op.get_bind()
            while bind.execute(RESTORE_BATCH, {"batch": BATCH_SIZE}).rowcount:
                pass

    op.alter_column("users", "full_name", existing_type=sa.Text, nullable=False)
