"""Alembic migrations: planning, phases, linting and safe execution."""
