"""releasegate: boring service upgrades for Postgres + Redis + Qdrant services."""

__version__ = "0.1.0"
