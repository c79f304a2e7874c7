"""moto's standalone S3 server, the S3-compatible stand-in the tests keep backup sets in.

:func:`moto_server` starts ``python -m moto.server`` on a free port of 127.0.0.1 and
yields its endpoint URL; it stops the server on exit (its buckets go with it).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port

START_TIMEOUT_S = 30


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """The endpoint of a moto S3 server started for the block, its output in ``log``."""
    port = free_port()
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
