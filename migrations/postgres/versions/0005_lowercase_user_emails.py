"""Normalise users.email to lower case (data, irreversible).

Why: sign-in compares lower(email); a mixed-case address stored earlier can never match
and can hide a duplicate account. Rewriting the stored addresses loses their original
case, so this revision cannot be undone.

Revision ID: 0005
Revises: 0004
Create Date: 2024-03-04 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

releasegate_phase = "data"


def upgrade() -> None:
    op.execute("UPDATE users SET email = lower(email) WHERE email <> lower(email)")


def downgrade() -> None:
    raise NotImplementedError(
        "0005 lower-cased users.email in place; the original case of each address is not "
        "kept anywhere, so it cannot be restored"
    )
