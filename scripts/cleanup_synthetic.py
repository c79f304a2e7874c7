"""Delete the example service's synthetic data: releasegate.toml's after_gate/after_watch hook.

    .venv/bin/python scripts/cleanup_synthetic.py [--marker M] [--dry-run] [--json]

A wrapper that puts ``examples/app`` on the import path and runs
``notes_app.cleanup_synthetic`` (its docstring says what goes); the marker defaults to
``RELEASEGATE_SYNTHETIC_MARKER``, which releasegate sets for its hooks.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "app"))

from notes_app.cleanup_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
