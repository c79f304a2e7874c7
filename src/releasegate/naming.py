"""Names releasegate checks without loading the config model (``init`` stays fast)."""

from __future__ import annotations

# A service name: it names containers, the router's backend, images and ledger rows.
SERVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
