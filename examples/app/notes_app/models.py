"""Schema of the example "notes" service at migration head, as SQLAlchemy Core tables.

This is the schema the revisions in migrations/postgres/versions build; autogenerate's
``compare_metadata`` against a database at head must report no differences. Change a
table here only together with a new revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        server_default=sa.text("now()"),
        nullable=False,
    ),
    # Filled from the retired ``full_name`` column (0003); nullable so the application
    # may create users before it knows a name.
    sa.Column("display_name", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("id", name="pk_users"),
    sa.UniqueConstraint("email", name="uq_users_email"),
)

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("owner_id", sa.BigInteger, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, server_default=sa.text("''"), nullable=False),
    sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        server_default=sa.text("now()"),
        nullable=False,
    ),
    sa.PrimaryKeyConstraint("id", name="pk_documents"),
    sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name="fk_documents_owner_id_users"),
    sa.Index("ix_documents_owner_id", "owner_id"),
)

document_chunks = sa.Table(
    "document_chunks",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("document_id", sa.BigInteger, nullable=False),
    sa.Column("ord", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    # Point id of the chunk's embedding in the vector store (Qdrant); NULL until indexed.
    sa.Column("vector_id", sa.Uuid, nullable=True),
    sa.PrimaryKeyConstraint("id", name="pk_document_chunks"),
    sa.ForeignKeyConstraint(
        ["document_id"],
        ["documents.id"],
        name="fk_document_chunks_document_id_documents",
        ondelete="CASCADE",
    ),
    sa.UniqueConstraint("document_id", "ord", name="uq_document_chunks_document_id_ord"),
    sa.Index("ix_document_chunks_vector_id", "vector_id"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column(
        "at",
        sa.DateTime(timezone=True),
        server_default=sa.text("now()"),
        nullable=False,
    ),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column(
        "detail",
        postgresql.JSONB,
        server_default=sa.text("'{}'::jsonb"),
        nullable=False,
    ),
    sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
)
