"""The example "notes" service: users, documents, vector-indexed chunks and an audit log."""
