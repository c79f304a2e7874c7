"""The "bookmarks" service: a small FastAPI app over Postgres and Redis."""
