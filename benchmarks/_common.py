"""Helpers shared by the benchmark scripts: timing, scratch databases, the example project."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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
