"""``python -m notes_app``: serve the example API with uvicorn (settings from the environment).

``NOTES_LOG_LEVEL`` sets uvicorn's log level (default ``info``); ``NOTES_ACCESS_LOG=1``
turns the per-request access log on (it is off: it costs CPU under load tests).
"""

from __future__ import annotations

import os
import sys

import uvicorn

from notes_app.main import create_app
from notes_app.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"notes: {exc}", file=sys.stderr)
        return 2
    print(
        f"notes {settings.variant.name} ({settings.git_sha[:12]}) on"
        f" {settings.host}:{settings.port}, search by"
        f" {'qdrant' if settings.qdrant_enabled else 'postgres'}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=os.environ.get("NOTES_LOG_LEVEL", "info"),
        access_log=os.environ.get("NOTES_ACCESS_LOG", "") not in ("", "0"),
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
