"""``python -m bookmarks_app.healthcheck``: the image's Docker HEALTHCHECK (/healthz).

The offline base image has no curl, so the probe is a few lines of standard library.
Exit status 0 means healthy, 1 unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('BOOKMARKS_PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
