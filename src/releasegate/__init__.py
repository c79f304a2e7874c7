"""releasegate: boring service upgrades for Postgres + Redis + Qdrant services."""

__version__ = "0.1.0"
# The GitHub repository of releasegate itself: its reusable workflows are called from here.
GITHUB_REPOSITORY = "releasegate/releasegate"
