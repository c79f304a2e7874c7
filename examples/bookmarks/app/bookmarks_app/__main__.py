"""``python -m bookmarks_app``: serve the API with uvicorn (settings from the environment)."""

from __future__ import annotations

import sys

import uvicorn

from bookmarks_app.main import create_app
from bookmarks_app.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"bookmarks: {exc}", file=sys.stderr)
        return 2
    print(
        f"bookmarks {settings.variant.name} ({settings.git_sha[:12]})"
        f" on {settings.host}:{settings.port}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,  # it costs CPU under the SLO gate's load
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
