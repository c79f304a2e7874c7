"""Helpers shared by the benchmark scripts: timing, scratch databases, the example project."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def checkout_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a ``releasegate`` command that runs this checkout's code (the venv's
    may be an editable install of another checkout)."""
    return {**env, "PYTHONPATH": str(REPO_ROOT / "src")}


def server_url() -> str:
    url = os.environ.get("RELEASEGATE_TEST_PG_URL")
    if not url:
        sys.exit("set RELEASEGATE_TEST_PG_URL (scripts/bench.sh does) to a role with CREATEDB")
    return url


def url_for(server: str, dbname: str) -> str:
    head, _, _ = server.partition("?")[0].rpartition("/")
    return f"{head}/{dbname}"


@contextmanager
def scratch_db(server: str) -> Iterator[str]:
    name = f"rgbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url_for(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run(cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one command, which must succeed."""
    started = time.perf_counter()
    result = subprocess.run(
        list(cmd), env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return took


def summary(label: str, samples: Sequence[float]) -> str:
    return (
        f"{label:<32} median {statistics.median(samples) * 1000:8.1f} ms"
        f"   min {min(samples) * 1000:8.1f} ms   max {max(samples) * 1000:8.1f} ms"
        f"   n={len(samples)}"
    )


def alternate(rounds: int, variants: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run the variants in turn, round after round, so drift hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(fn())
    return samples


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_answers(url: str, timeout: float = 20.0) -> None:
    """Wait until ``url`` answers HTTP (any status); exit when it does not in ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{url} did not answer")
            time.sleep(0.05)


@contextmanager
def redis_server() -> Iterator[int]:
    """A throwaway redis-server on a free port (no persistence); yields the port."""
    import redis

    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (scripts/lib/setup.sh installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rg-bench-redis-") as folder:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
             "--save", "", "--appendonly", "no", "--logfile", f"{folder}/redis.log"],
        )  # fmt: skip
        try:
            client = redis.Redis(port=port)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=30)
