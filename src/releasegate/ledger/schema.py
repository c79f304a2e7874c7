"""releasegate's own versioned migrations for the ``releasegate`` ledger schema.

Append new versions at the end; never edit an applied one. They run in one
transaction under a transaction-scoped advisory lock, so two runners starting at the
same moment do not race to create the schema.
"""

from __future__ import annotations

LEDGER_SCHEMA = "releasegate"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE releasegate.releases (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            service         text NOT NULL,
            kind            text NOT NULL DEFAULT 'release',
            git_sha         text,
            image_ref       text,
            image_digest    text,
            performer       text NOT NULL,
            started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at     timestamptz,
            outcome         text NOT NULL DEFAULT 'running',
            alembic_before  text,
            alembic_after   text,
            redis_before    text,
            redis_after     text,
            qdrant_before   text,
            qdrant_after    text,
            summary         jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX releases_service_started ON releasegate.releases (service, started_at DESC);

        CREATE TABLE releasegate.events (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            release_id   bigint NOT NULL REFERENCES releasegate.releases (id),
            at           timestamptz NOT NULL DEFAULT clock_timestamp(),
            step         text NOT NULL,
            status       text NOT NULL,
            duration_ms  double precision,
            detail       jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX events_release ON releasegate.events (release_id, id);

        -- The step log is evidence: it may grow, never change.
        CREATE FUNCTION releasegate.events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'releasegate.events is append-only';
        END
        $$;
        CREATE TRIGGER events_append_only
            BEFORE UPDATE OR DELETE ON releasegate.events
            FOR EACH ROW EXECUTE FUNCTION releasegate.events_append_only();
        """,
    ),
    (
        2,
        """
        -- Rows opened by a release's own steps (its backup, migrations, restores) point at
        -- the release, so that views can show one release as one row.
        ALTER TABLE releasegate.releases
            ADD COLUMN parent_id bigint REFERENCES releasegate.releases (id);
        CREATE INDEX releases_parent ON releasegate.releases (parent_id)
            WHERE parent_id IS NOT NULL;
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]
