"""How the service recognises releasegate's synthetic traffic (see notes_app.main)."""

from __future__ import annotations

import re

HEADER = "X-Releasegate-Synthetic"
# The marker's field in session JSON and in audit_log detail.
FIELD = "synthetic"
MARKER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
