"""Restore points: backup sets of Postgres, Redis and Qdrant, verified by restoring them."""
