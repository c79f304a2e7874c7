"""A whole release environment of the example service, for the release pipeline's tests.

:func:`open_release_env` copies the example project (migrations of every store, the app
package, smoke checks, load test) into a folder, writes a config of its own (a unique
service name, free ports, a short SLO gate, no watch window), seeds v1 data into the
given database, Redis DB and embedded Qdrant, brings the router up, deploys
``notes:v1`` as blue and promotes it (``baseline=False``: none of that, for a first
release). Everything is real: Postgres, Redis, Docker
containers with host networking, HAProxy, Locust. Containers, the router and the
router's saved state are removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import psycopg
from conftest import free_ports
from psycopg.rows import dict_row

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
RELEASEGATE = Path(sys.executable).parent / "releasegate"
BASE_IMAGE = os.environ.get("RELEASEGATE_BASE_IMAGE", "releasegate/python:3.11-bookworm")
VARIANTS = ("v1", "v2", "v3-bad", "v2-watch-bad")
COLOR_HEADER = "X-Releasegate-Color"

CONFIG = """\
[service]
name = "{service}"

[postgres]
url_env = "NOTES_DATABASE_URL"

[migrations]
postgres = "migrations/postgres"
metadata = "notes_app.models:metadata"
python_path = ["examples/app"]
lock_timeout = "5s"
statement_timeout = "1m"
lock_retries = 1
retry_backoff = "200ms"

[lock]
wait = "1s"
poll_interval = "100ms"

[redis]
url_env = "NOTES_REDIS_URL"
patterns = ["sess:*", "session:*", "cache:*"]
volatile_patterns = ["cache:*"]
migrations = "migrations/redis"

[qdrant]
url_env = "QDRANT_URL"
path = ".releasegate/qdrant"
migrations = "migrations/qdrant"
collections = ["documents"]

[backup]
dir = ".releasegate/backups"

[build]
repository = "releasegate-test/{service}"  # nothing of this name exists: prune removes nothing

[deploy]
network = "host"
port_env = "NOTES_PORT"
blue_port = {blue}
green_port = {green}
env_passthrough = ["NOTES_DATABASE_URL", "NOTES_REDIS_URL"]
memory = "256m"
cpus = 1.0
ready_timeout = "60s"
drain = "1s"

[smoke]
file = "smoke.toml"

[slo]
locustfile = "loadtests/locustfile.py"
users = 5
spawn_rate = 5
warmup = "1s"
duration = "4s"
min_requests = 20

[slo.thresholds]
total = ["p95 < 800ms", "error_rate < 2%"]
"GET /documents" = ["p95 < 240ms"]

[router]
bind = "127.0.0.1:{router}"
runtime_dir = "rt"
check_interval = "200ms"
stop_timeout = "2s"

[release]
watch = 0
report_dir = ".releasegate/reports"
# The load and the reader refresh sessions' last_seen: the live version updates them.
live_updates = ["redis:sess:*", "redis:session:*"]

[hooks]
after_gate = ["{python}", "scripts/cleanup_synthetic.py"]
after_watch = ["{python}", "scripts/cleanup_synthetic.py"]
"""


def source_hash() -> str:
    """A digest of the example service's build inputs: a changed app gets new images."""
    import hashlib

    digest = hashlib.sha256()
    app = REPO_ROOT / "examples" / "app"
    for path in sorted(app.rglob("*")):
        parts = set(path.relative_to(app).parts)
        if path.is_file() and not parts & {"wheels", "__pycache__", ".pytest_cache"}:
            if path.name.startswith(".releasegate-wheels"):
                continue
            digest.update(str(path.relative_to(app)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_images() -> None:
    """notes:<variant> of every variant, built from the repository unless the images of
    the current example source exist already (tagged ``notes:<variant>-src-<hash>``)."""
    client = docker.from_env()
    stamp = source_hash()
    try:
        missing = []
        for variant in VARIANTS:
            try:
                image = client.images.get(f"notes:{variant}-src-{stamp}")
                image.tag("notes", variant)
            except docker.errors.ImageNotFound:
                missing.append(variant)
        if not missing:
            return
        try:
            client.images.get(BASE_IMAGE)
        except docker.errors.ImageNotFound:
            subprocess.run(
                [str(REPO_ROOT / "scripts" / "build-base-image.sh"), BASE_IMAGE],
                check=True,
                timeout=900,
            )
        env = {**os.environ, "RELEASEGATE_CONFIG": str(REPO_ROOT / "releasegate.toml")}
        for variant in missing:
            subprocess.run(
                [
                    str(RELEASEGATE),
                    "build",
                    "--quiet",
                    "--build-arg",
                    f"NOTES_VARIANT={variant}",
                    "--tag",
                    f"notes:{variant}",
                ],
                cwd=REPO_ROOT,
                env=env,
                check=True,
                capture_output=True,
                timeout=900,
            )
            client.images.get(f"notes:{variant}").tag("notes", f"{variant}-src-{stamp}")
    finally:
        client.close()


class ReleaseEnv:
    """One copy of the example project with its stores, router and blue v1 live."""

    def __init__(self, root: Path, pg_url: str, redis_url: str) -> None:
        self.root = root
        self.pg_url = pg_url
        self.redis_url = redis_url
        self.service = f"rg-rel-{uuid.uuid4().hex[:8]}"
        router, blue, green = free_ports(3)
        self.ports = {"router": router, "blue": blue, "green": green}
        self.config_path = root / "releasegate.toml"
        self.docker = docker.from_env()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
        env.pop("QDRANT_URL", None)
        env.pop("RELEASEGATE_DEBUG", None)
        env.pop("ACT", None)
        env.update(
            NOTES_DATABASE_URL=pg_url,
            NOTES_REDIS_URL=redis_url,
            RELEASEGATE_CONFIG=str(self.config_path),
            RELEASEGATE_PERFORMER="release-tests",
            NOTES_LOAD_MAX_ID="200",  # the load test's ids stay within the seeded users
        )
        self.env = env

    # -- setup ---------------------------------------------------------------------------

    def copy_project(self) -> None:
        ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
        shutil.copytree(REPO_ROOT / "migrations", self.root / "migrations", ignore=ignore)
        shutil.copytree(
            REPO_ROOT / "examples" / "app" / "notes_app",
            self.root / "examples" / "app" / "notes_app",
            ignore=ignore,
        )
        shutil.copytree(REPO_ROOT / "loadtests", self.root / "loadtests", ignore=ignore)
        shutil.copy(REPO_ROOT / "smoke.toml", self.root / "smoke.toml")
        (self.root / "scripts").mkdir()
        shutil.copy(REPO_ROOT / "scripts" / "cleanup_synthetic.py", self.root / "scripts")
        self.config_path.write_text(
            CONFIG.format(service=self.service, python=sys.executable, **self.ports),
            encoding="utf-8",
        )

    def start(self, *, baseline: bool = True) -> None:
        """Seed v1 data; with ``baseline``, router up, blue v1 deployed and promoted (else
        the router stays down and nothing runs: the next release is the first)."""
        self.copy_project()
        seed = subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "scripts" / "seed.py"),
                "--users",
                "200",
                "--migrate-to",
                "0002",
            ],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert seed.returncode == 0, seed.stdout + seed.stderr
        if not baseline:
            return
        for args in (
            ("router", "up"),
            ("deploy", "--color", "blue", "--image", "notes:v1", "--force"),
            ("router", "promote", "blue"),
        ):
            result = self.run(*args)
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        assert self.weights() == {"blue": 100, "green": 0}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run("router", "down", "--forget", timeout=60)
        for container in self.containers():
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
        self.docker.close()

    # -- the CLI -------------------------------------------------------------------------

    def run(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``releasegate ARGS`` in the project folder; never raises on a non-zero exit."""
        return subprocess.run(
            [str(RELEASEGATE), *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(RELEASEGATE), *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_json(self, *args: str) -> dict[str, Any]:
        result = self.run(*args, "--json")
        try:
            data: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{args}: {result.stdout}\n{result.stderr}") from exc
        return data

    # -- the ledger ----------------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with psycopg.connect(self.pg_url, autocommit=True, row_factory=dict_row) as conn:
            return list(conn.execute(sql, params).fetchall())

    def releases(self, kind: str | None = "release") -> list[dict[str, Any]]:
        """This service's ledger rows, oldest first."""
        rows = self.query(
            "SELECT * FROM releasegate.releases WHERE service = %s ORDER BY id", (self.service,)
        )
        return [r for r in rows if kind is None or r["kind"] == kind]

    def last_release(self) -> dict[str, Any]:
        rows = self.releases()
        assert rows, "no release in the ledger"
        return rows[-1]

    def events(self, release_id: int) -> list[dict[str, Any]]:
        return self.query(
            "SELECT step, status, detail FROM releasegate.events WHERE release_id = %s ORDER BY id",
            (release_id,),
        )

    def step_status(self, step: str) -> str | None:
        """The status of ``step`` in the newest running release, if it has ended."""
        try:
            rows = self.query(
                "SELECT e.status FROM releasegate.events e JOIN releasegate.releases r"
                " ON r.id = e.release_id WHERE r.service = %s AND r.outcome = 'running'"
                " AND e.step = %s ORDER BY e.id DESC LIMIT 1",
                (self.service, step),
            )
        except psycopg.errors.UndefinedTable:
            return None
        return str(rows[0]["status"]) if rows else None

    # -- the live state ------------------------------------------------------------------

    def weights(self) -> dict[str, int]:
        state = self.run_json("router", "status")
        return {color: int(state["colors"][color]["weight"]) for color in ("blue", "green")}

    def status(self) -> dict[str, Any]:
        return self.run_json("status")

    def versions(self) -> dict[str, Any]:
        """Each store's current version as ``releasegate status --json`` shows it."""
        stores = self.status()["stores"]
        out: dict[str, Any] = {}
        for name, store in stores.items():
            current = store.get("current", store.get("version"))
            if isinstance(current, list):
                current = current[0] if len(current) == 1 else current
            out[name] = current
        return out

    def serving(self, requests: int = 6) -> Counter[str]:
        """The colors (and variants) that answer ``/version`` through the router."""
        seen: Counter[str] = Counter()
        url = f"http://127.0.0.1:{self.ports['router']}/version"
        with httpx.Client(timeout=5) as client:
            for _ in range(requests):
                response = client.get(url)
                assert response.status_code == 200, response.text
                seen[f"{response.headers[COLOR_HEADER]}:{response.json()['variant']}"] += 1
        return seen

    def containers(self) -> list[Any]:
        return list(
            self.docker.containers.list(
                all=True, filters={"label": f"releasegate.service={self.service}"}
            )
        )

    def container_colors(self) -> dict[str, str]:
        """Running containers of this service: color -> image label."""
        return {
            c.labels.get("releasegate.color", "?"): c.labels.get("releasegate.image", "")
            for c in self.containers()
            if c.status == "running"
        }

    def report(self, release_id: int) -> dict[str, Any]:
        path = self.root / ".releasegate" / "reports" / f"release-{release_id}.json"
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def counts(self) -> dict[str, Any]:
        """Live counts of every store, as the backup manifest records them."""
        from releasegate.backup import sets
        from releasegate.config import load_config

        settings = load_config(self.config_path, self.env)
        return {
            name: sets.store_module(name).counts(settings)
            for name in ("postgres", "redis", "qdrant")
        }

    # -- test migrations -----------------------------------------------------------------

    def add_pg_revision(self, revision: str, upgrade: str, downgrade: str = "pass") -> None:
        """A revision between 0005 and 0006 (so that the release's migrate step runs it)."""
        versions = self.root / "migrations" / "postgres" / "versions"
        text = f'''"""Test revision {revision}.

Revision ID: {revision}
Revises: 0005
Create Date: 2024-03-05 09:00:00
"""

from alembic import op

revision = "{revision}"
down_revision = "0005"
branch_labels = None
depends_on = None

releasegate_phase = "expand"


def upgrade() -> None:
    {upgrade}


def downgrade() -> None:
    {downgrade}
'''
        (versions / f"{revision}_test_fault.py").write_text(text, encoding="utf-8")
        contract = next(versions.glob("0006_*.py"))
        source = contract.read_text(encoding="utf-8")
        patched = source.replace(
            'down_revision: str | Sequence[str] | None = "0005"',
            f'down_revision: str | Sequence[str] | None = "{revision}"',
        )
        assert patched != source
        contract.write_text(patched.replace("Revises: 0005", f"Revises: {revision}"))

    def add_migration(self, store: str, filename: str, text: str) -> None:
        (self.root / "migrations" / store / filename).write_text(text, encoding="utf-8")


def wait_for(predicate: Callable[[], Any], timeout: float, poll: float = 0.1) -> Any:
    """The first truthy value of ``predicate`` within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    return None


class Watcher(threading.Thread):
    """Runs ``action`` once ``trigger`` holds (polled), at most ``timeout`` seconds."""

    def __init__(
        self, trigger: Callable[[], Any], action: Callable[[], Any], timeout: float = 240
    ) -> None:
        super().__init__(daemon=True)
        self.trigger = trigger
        self.action = action
        self.timeout = timeout
        self.fired = False
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if wait_for(self.trigger, self.timeout, poll=0.05):
                self.result = self.action()
                self.fired = True
        except BaseException as exc:  # reported by the test
            self.error = exc


@contextlib.contextmanager
def open_release_env(
    root: Path, pg_url: str, redis_url: str, *, baseline: bool = True
) -> Iterator[ReleaseEnv]:
    env = ReleaseEnv(root, pg_url, redis_url)
    try:
        env.start(baseline=baseline)
        yield env
    finally:
        env.close()
