"""The schema at the head revision of migrations/postgres, as SQLAlchemy Core tables.

releasegate compares a database migrated to head with this metadata (``migrate test``,
``migrate verify``): change it only together with a new revision. The service itself
never imports it (the image does not install SQLAlchemy).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

bookmarks = sa.Table(
    "bookmarks",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        server_default=sa.text("now()"),
        nullable=False,
    ),
    # The bookmark's text: added by 0002, replacing note (dropped by 0003).
    sa.Column("description", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("id", name="pk_bookmarks"),
)
