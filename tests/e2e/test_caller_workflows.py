"""releasegate adopted by a repository that is not this one, as a user adopts it.

The bookmarks example (its own API, Alembic chain, smoke file and locustfile) becomes a
git repository of its own; `releasegate init` writes its caller workflows, which call
this repository's reusable workflows as `OWNER/releasegate/...@REF`. act resolves those
calls to this checkout (`--local-repository`) and runs them with local images (scripts/
ci/act-rehearsal.sh --caller DIR). Images go to the simulated remote host's registry,
which both this machine's engine and the remote host's engine pull from.

Staging is the ephemeral rehearsal on this machine; production is the simulated remote
host (tests/remote_host.py), reached over ssh:// with the secrets read from a file, its
router and colors placed by the repository's releasegate.production.toml, its backup
sets kept in an S3 bucket (moto's server, the S3 stand-in) so that a later job on a
fresh runner finds them:

1. staging on push of v1: the environment's first release (no baseline) is promoted;
2. staging on push of v2: the baseline is v1's promoted digest, its schema at v1's own
   revision (0001), so v1 really runs on the expanded schema; v2 is promoted, its contract
   revision deferred;
3. staging on push of v3-bad: the SLO gate fails and the release rolls back;
4. production by workflow_dispatch of v1: production's first release, on the remote host;
5. production of v2: the digest staging promoted, never rebuilt, while users write
   bookmarks through the remote router;
6. production of v3-bad, which staging never promoted: exit 2, nothing built;
7. the rollback workflow undoes production's v2 release: v1 serves again, verified
   against the restore point fetched from the bucket, and no acknowledged write is lost;
8. the rollback workflow with a release id the ledger does not know: exit 2, one line.

One slow test: each act run needs the one before it (the registry holds what staging
promoted). The time of every run is printed, by step; staging must stay under 8 minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import pytest
import redis
from bookmarks_repo import advance, git, make_bookmarks_repo
from conftest import (
    create_database,
    drop_database,
    free_ports,
    local_haproxy_image,
    url_for_database,
)
from remote_host import RemoteHost, load_on_remote
from s3_server import moto_server

ROOT = Path(__file__).resolve().parents[2]
REHEARSAL = ROOT / "scripts" / "ci" / "act-rehearsal.sh"
BIN = Path(sys.executable).parent
STAGING_BUDGET_S = 8 * 60
# The reusable workflows' address in the generated callers; act maps it to this checkout.
TOOL_REPOSITORY = "releasegate/releasegate"
TOOL_REF = "main"
# The service name act-rehearsal.sh gives the caller's service (SERVICE-act).
SERVICE = "bookmarks-act"
# A Redis DB of the remote host's server no other test uses.
PRODUCTION_REDIS_DB = 8
BUCKET = "rg-production-backups"
S3_KEY_ID = "rg-act-key"


@dataclass
class ActRun:
    outcome: str
    seconds: float
    log: str

    def errors(self) -> list[str]:
        """The `error:` lines the jobs printed (act prefixes them with `[job] | `)."""
        return [m.group(1) for m in re.finditer(r"\|\s*(error: .*)$", self.log, re.M)]

    def output(self, name: str) -> str:
        """The last value a step gave its output ``name``."""
        found = re.findall(rf"::set-output:: {re.escape(name)}=(\S+)", self.log)
        assert found, f"no output {name}: {self.log[-3000:]}"
        return found[-1]


def _act(repo: Path, workflow: str, image: str, *args: str) -> ActRun:
    started = time.monotonic()
    env = {**os.environ, "RELEASEGATE_ACT_GATE_PROFILE": "quick", "RELEASEGATE_ACT_IMAGE": image}
    proc = subprocess.run(
        ["bash", str(REHEARSAL), "--caller", str(repo), "--workflow", workflow, *args],
        capture_output=True,
        text=True,
        timeout=20 * 60,
        env=env,
    )
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("releasegate-outcome="), output[-4000:]
    timings = proc.stdout[proc.stdout.rfind("step timings:") :]
    inputs = " ".join(arg for arg in args if arg.startswith(("version=", "release-id=")))
    print(f"\n{Path(workflow).name} {inputs}: {last} in {seconds:.0f} s\n{timings}")
    return ActRun(last.removeprefix("releasegate-outcome="), seconds, output)


def _dotenv_value(value: str) -> str:
    """``value`` as one double-quoted line of act's .env secret file."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


@dataclass
class Production:
    """The production environment of the test: the remote host, its stores, a bucket."""

    host: RemoteHost
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    s3_endpoint: str
    s3_secret: str = field(repr=False)
    public_port: int
    blue_port: int
    green_port: int
    router_image: str

    def config_overlay(self) -> str:
        """releasegate.production.toml: what differs on the remote host."""
        return (
            "# Production: the remote host (DOCKER_HOST=ssh://...), its router in a container.\n"
            "[router]\n"
            'mode = "container"\n'
            f'image = "{self.router_image}"\n'
            f'bind = "{self.host.address}:{self.public_port}"\n\n'
            "[deploy]\n"
            f'remote_docker_socket = "{self.host.docker_socket}"\n'
            f"blue_port = {self.blue_port}\n"
            f"green_port = {self.green_port}\n\n"
            "[backup]\n"
            f'destination = "s3://{BUCKET}/bookmarks"\n'
        )

    def write_secret_file(self, path: Path) -> Path:
        """The caller's PRODUCTION_* secrets, in act's .env format (read by act, not argv)."""
        secrets = {
            "PRODUCTION_DOCKER_HOST": self.host.docker_host,
            "PRODUCTION_DOCKER_SSH_KEY": self.host.ssh_key.read_text(),
            "PRODUCTION_DOCKER_KNOWN_HOSTS": self.host.known_hosts.read_text(),
            "PRODUCTION_DATABASE_URL": self.database_url,
            "PRODUCTION_REDIS_URL": self.redis_url,
            "PRODUCTION_BACKUP_AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "PRODUCTION_BACKUP_AWS_SECRET_ACCESS_KEY": self.s3_secret,
            "PRODUCTION_BACKUP_AWS_ENDPOINT_URL": self.s3_endpoint,
            "PRODUCTION_BACKUP_AWS_REGION": "us-east-1",
        }
        path.write_text("".join(f"{k}={_dotenv_value(v)}\n" for k, v in secrets.items()))
        path.chmod(0o600)
        return path

    @property
    def public_url(self) -> str:
        return f"http://{self.host.address}:{self.public_port}"

    def secrets_in(self, text: str) -> list[str]:
        """Which secret values (or their passwords) appear in ``text``."""
        password = self.database_url.split("@")[0].rsplit(":", 1)[-1]
        redis_password = self.redis_url.split("@")[0].rsplit(":", 1)[-1]
        key_body = self.host.ssh_key.read_text().splitlines()[1]
        values = {"db": password, "redis": redis_password, "s3": self.s3_secret, "key": key_body}
        return [name for name, value in values.items() if value in text]


@pytest.fixture
def production(remote_host: RemoteHost, tmp_path: Path) -> Iterator[Production]:
    """A fresh database and Redis DB on the remote host, a bucket, the router image there."""
    router_image = local_haproxy_image()
    load_on_remote(remote_host, router_image)
    database = create_database(remote_host.postgres_url, prefix="rgprod")
    redis_url = remote_host.redis_url.rpartition("/")[0] + f"/{PRODUCTION_REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    secret = f"s3-{uuid.uuid4().hex}"
    public, blue, green = free_ports(3)
    with moto_server(tmp_path / "moto.log") as endpoint:
        boto3.session.Session(
            aws_access_key_id=S3_KEY_ID, aws_secret_access_key=secret, region_name="us-east-1"
        ).client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        try:
            yield Production(
                host=remote_host,
                database_url=url_for_database(remote_host.postgres_url, database),
                redis_url=redis_url,
                s3_endpoint=endpoint,
                s3_secret=secret,
                public_port=public,
                blue_port=blue,
                green_port=green,
                router_image=router_image,
            )
        finally:
            for name in (f"{SERVICE}-blue", f"{SERVICE}-green", f"releasegate-router-{SERVICE}"):
                remote_host.docker("rm", "--force", name)
            remote_host.docker("volume", "rm", "--force", f"releasegate-router-{SERVICE}")
            redis.Redis.from_url(redis_url).flushdb()
            drop_database(remote_host.postgres_url, database)


class BookmarkWriter:
    """A user adding bookmarks through the production router, every write acknowledged
    (HTTP 201) recorded with its content; :meth:`lost` reads each one back."""

    def __init__(self, base_url: str, interval_s: float = 0.1) -> None:
        self.base_url = base_url
        self.interval_s = interval_s
        self.acknowledged: dict[int, str] = {}
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BookmarkWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            n = 0
            while not self._stop.wait(self.interval_s):
                n += 1
                url = f"https://example.test/live/{uuid.uuid4().hex}"
                try:
                    answer = client.post("/bookmarks", json={"url": url, "note": f"live {n}"})
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                if answer.status_code == 201:
                    self.acknowledged[int(answer.json()["id"])] = url
                else:
                    self.failed += 1

    def lost(self) -> list[int]:
        """The acknowledged bookmarks that are not there, or not as written."""
        missing = []
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            for bookmark_id, url in sorted(self.acknowledged.items()):
                answer = client.get(f"/bookmarks/{bookmark_id}")
                if answer.status_code != 200 or answer.json().get("url") != url:
                    missing.append(bookmark_id)
        return missing


def _serving_variant(production: Production) -> str:
    answer = httpx.get(f"{production.public_url}/version", timeout=5)
    answer.raise_for_status()
    return str(answer.json()["variant"])


@pytest.mark.slow
def test_a_service_repository_releases_through_the_reusable_workflows(
    tmp_path: Path, production: Production
) -> None:
    if shutil.which("docker") is None or not (BIN / "act").exists():
        pytest.skip("needs docker and act (the dev extras)")
    image = f"{production.host.registry}/bookmarks-{os.getpid()}"
    repo = make_bookmarks_repo(tmp_path / "bookmarks", "v1")
    git(repo, "remote", "add", "origin", "https://github.com/example/bookmarks.git")
    init = subprocess.run(
        [
            str(BIN / "releasegate"),
            "init",
            "--releasegate-repository",
            TOOL_REPOSITORY,
            "--releasegate-ref",
            TOOL_REF,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    workflows = repo / ".github" / "workflows"
    staging = ".github/workflows/releasegate-staging.yml"
    production_workflow = ".github/workflows/releasegate-production.yml"
    rollback = ".github/workflows/releasegate-rollback.yml"
    for name in (staging, production_workflow, rollback):
        text = (repo / name).read_text()
        assert f"uses: {TOOL_REPOSITORY}/.github/workflows/" in text, text
        assert "secrets: inherit" not in text
    assert len(list(workflows.iterdir())) == 3
    (repo / "releasegate.production.toml").write_text(production.config_overlay())
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "releasegate init, production config")
    secret_file = production.write_secret_file(tmp_path / "production.secrets")
    remote = ("--remote", "--secret-file", str(secret_file))

    # 1. The first release of the staging environment: no baseline to deploy first.
    first = _act(repo, staging, image)
    assert first.outcome == "succeeded", first.log[-6000:]
    assert "the release is this environment's first" in first.log
    v1 = git(repo, "rev-parse", "HEAD")

    # 2. v2 over v1: v1's promoted digest, its schema at 0001, is live first.
    v2 = advance(repo, "v2")
    second = _act(repo, staging, image)
    assert second.outcome == "succeeded", second.log[-6000:]
    assert second.seconds < STAGING_BUDGET_S, f"staging took {second.seconds:.0f} s"
    assert "schema at 0001" in second.log, second.log[-6000:]
    assert "deferred 0003" in second.log, second.log[-6000:]
    staged = second.output("digest")

    # 3. v3-bad: the gate fails, the release rolls back by itself.
    v3 = advance(repo, "v3-bad")
    third = _act(repo, staging, image)
    assert third.outcome == "rolled_back", third.log[-6000:]
    assert third.seconds < STAGING_BUDGET_S, f"staging took {third.seconds:.0f} s"

    # 4. Production's first release, v1, on the remote host over ssh://.
    prod_v1 = _act(repo, production_workflow, image, "--input", f"version={v1}", *remote)
    assert prod_v1.outcome == "succeeded", prod_v1.log[-6000:]
    assert _serving_variant(production) == "v1"

    # 5. v2: the digest staging promoted, never rebuilt, while a user writes bookmarks.
    with BookmarkWriter(production.public_url) as during_release:
        prod_v2 = _act(repo, production_workflow, image, "--input", f"version={v2}", *remote)
    assert prod_v2.outcome == "succeeded", prod_v2.log[-6000:]
    assert prod_v2.output("digest") == staged
    assert "released as is, not rebuilt" in prod_v2.log
    assert "built " not in prod_v2.log
    assert _serving_variant(production) == "v2"
    release_id = prod_v2.output("release-id")

    # 6. A version staging never promoted: exit 2, one line, nothing built or released.
    refused = _act(repo, production_workflow, image, "--input", f"version={v3}", *remote)
    assert refused.outcome == "none", refused.log[-6000:]
    assert refused.errors() == [
        f"error: no promoted digest for {v3}: staging never promoted commit {v3} of {image}"
    ], refused.log[-6000:]
    assert "exitcode '2'" in refused.log and "built " not in refused.log

    # 7. The rollback workflow undoes v2 on a fresh runner: the restore point comes from
    # the bucket, v1 serves again, and what users wrote under v2 and during it is kept.
    with BookmarkWriter(production.public_url) as during_rollback:
        undone = _act(repo, rollback, image, "--input", f"release-id={release_id}", *remote)
    assert undone.outcome == "rolled_back", undone.log[-6000:]
    assert _serving_variant(production) == "v1"
    for writer in (during_release, during_rollback):
        assert writer.acknowledged and writer.failed == 0, writer.failed
        assert writer.lost() == []
    print(
        f"bookmarks written through the router: {len(during_release.acknowledged)} during the"
        f" v2 release, {len(during_rollback.acknowledged)} during its rollback; 0 failed, 0 lost"
    )

    # 8. The rollback workflow, with an id the production ledger does not know.
    unknown = _act(repo, rollback, image, "--input", "release-id=999999", *remote)
    assert unknown.outcome == "none", unknown.log[-6000:]
    assert unknown.errors() == ["error: no release with id 999999 in the ledger"]
    assert "exitcode '2'" in unknown.log

    for run in (prod_v1, prod_v2, refused, undone, unknown):
        assert production.secrets_in(run.log) == []
