"""The bookmarks example: a service in a git repository of its own that calls releasegate.

Each test makes the repository with :mod:`bookmarks_repo` and runs the releasegate CLI in
it against a real Postgres database and a real Redis DB: the config checks, the
migration chain passes the stairway test at each stage, the release plan holds 0003
back as contract, and the variants keep the expand/contract promise (in process). The
slow test builds the v1 and v2 images offline from two commits and runs them with
Docker against the same stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import redis
from bookmarks_repo import EXAMPLE, Stage, advance, git, make_bookmarks_repo
from conftest import ensure_base_image, free_ports

RELEASEGATE = Path(sys.executable).parent / "releasegate"


@dataclass
class BookmarksRepo:
    """A bookmarks repository with the stores the CLI runs against."""

    path: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RELEASEGATE), "--config", str(self.path / "releasegate.toml"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
        return result.stdout


def open_repo(tmp_path: Path, variant: Stage, pg_url: str, redis_url: str) -> BookmarksRepo:
    # Outside Actions: GITHUB_SHA would stand for the commit; RELEASEGATE_* would override
    # the repository's own config.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RELEASEGATE_"))}
    env.update(DATABASE_URL=pg_url, REDIS_URL=redis_url)
    return BookmarksRepo(make_bookmarks_repo(tmp_path, variant), env)


def test_repo_stages_are_commits_of_the_example(tmp_path: Path) -> None:
    repo = make_bookmarks_repo(tmp_path, "v1")
    versions = repo / "migrations" / "postgres" / "versions"
    assert sorted(p.name for p in versions.glob("0*.py")) == ["0001_create_bookmarks.py"]
    assert "ARG BOOKMARKS_VARIANT=v1\n" in (repo / "app" / "Dockerfile").read_text()
    assert git(repo, "status", "--porcelain") == ""

    second = advance(repo, "v3-bad")
    assert len(second) == 40
    assert len(list(versions.glob("0*.py"))) == 3
    assert "ARG BOOKMARKS_VARIANT=v3-bad\n" in (repo / "app" / "Dockerfile").read_text()
    models = repo / "app" / "bookmarks_app" / "models.py"
    assert models.read_bytes() == (EXAMPLE / "app" / "bookmarks_app" / "models.py").read_bytes()
    assert git(repo, "log", "--format=%s").splitlines() == ["bookmarks v3-bad", "bookmarks v1"]


def test_config_check_passes_and_env_py_runs_on_the_shared_connection(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    from releasegate.config import load_config
    from releasegate.validate import shared_connection_problem

    repo = open_repo(tmp_path, "v2", pg_url, redis_url)
    config = json.loads(repo.ok("config", "check", "--json"))
    assert config["service"]["name"] == "bookmarks" and config["qdrant"] is None
    assert config["redis"]["volatile_patterns"] == ["bm:cache:*"]
    # What a release checks besides: revisions run under releasegate's timeouts.
    settings = load_config(repo.path / "releasegate.toml", repo.env)
    assert shared_connection_problem(settings) is None


@pytest.mark.parametrize(("variant", "head"), [("v1", "0001"), ("v2", "0003")])
def test_stairway_passes_at_each_stage(
    tmp_path: Path, pg_url: str, redis_url: str, variant: Stage, head: str
) -> None:
    repo = open_repo(tmp_path, variant, pg_url, redis_url)
    report = json.loads(repo.ok("migrate", "test", "--json"))
    assert report["ok"] is True
    assert report["revisions"][-1]["revision"] == head
    assert all(r["up"] == r["down"] == r["reup"] == "ok" for r in report["revisions"])
    # models.py matches the head of each commit.
    assert report["drift"] == [] and report["problems"] == []


def test_plan_holds_back_the_contract_revision(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    # The database as commit 1's release left it, planned with commit 2's chain.
    repo = open_repo(tmp_path, "v2", pg_url, redis_url)
    repo.ok("migrate", "up", "--store", "postgres", "--to", "0001")
    plan = json.loads(repo.ok("migrate", "plan", "--json"))
    phases = {r["revision"]: (r["phase"], r["phase_source"]) for r in plan["revisions"]}
    assert phases == {"0002": ("expand", "declared"), "0003": ("contract", "declared")}
    assert plan["contract_revisions"] == ["0003"] and plan["lint_failed"] is False

    text = repo.ok("migrate", "plan")
    assert "0003  [contract (declared)]" in text
    assert "contract revisions (cannot be rolled back automatically): 0003" in text


# -- the variants in process ----------------------------------------------------------


async def _requests(env: dict[str, str], calls: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    from bookmarks_app.main import create_app
    from bookmarks_app.settings import load_settings

    app = create_app(load_settings(env))
    responses = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        for method, path, body in calls:
            responses.append(await http.request(method, path, json=body))
    return responses


def _forget_bookmarks_app() -> None:
    # Another test's env.py may have imported a repository copy's bookmarks_app.
    for name in [m for m in sys.modules if m.split(".")[0] == "bookmarks_app"]:
        del sys.modules[name]


@pytest.fixture
def bookmarks_app_importable() -> Iterator[None]:
    """``bookmarks_app`` imports from examples/bookmarks/app during the test."""
    app_dir = str(EXAMPLE / "app")
    _forget_bookmarks_app()
    sys.path.insert(0, app_dir)
    try:
        yield
    finally:
        sys.path.remove(app_dir)
        _forget_bookmarks_app()


@pytest.mark.usefixtures("bookmarks_app_importable")
def test_v1_and_v2_share_the_expanded_schema_and_v2_outlives_the_contract(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    repo = open_repo(tmp_path, "v2", pg_url, redis_url)
    stores = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url}
    v1 = {**stores, "BOOKMARKS_VARIANT": "v1"}
    v2 = {**stores, "BOOKMARKS_VARIANT": "v2"}

    repo.ok("migrate", "up", "--store", "postgres", "--to", "0001")
    v1_ready, first = asyncio.run(
        _requests(
            v1, [("GET", "/readyz", None), ("POST", "/bookmarks", {"url": "u1", "note": "a"})]
        )
    )
    assert v1_ready.status_code == 200 and first.status_code == 201
    [v2_ready] = asyncio.run(_requests(v2, [("GET", "/readyz", None)]))
    assert v2_ready.status_code == 503
    assert v2_ready.json()["checks"]["postgres"]["error"] == (
        "database at 0001; v2 runs on 0002, 0003"
    )

    # 0002 (expand): old code on the new schema, new code beside it.
    repo.ok("migrate", "up", "--store", "postgres", "--to", "0002")
    by_v2, v2_list, v2_first = asyncio.run(
        _requests(
            v2,
            [
                ("POST", "/bookmarks", {"url": "u2", "description": "b"}),
                ("GET", "/bookmarks", None),
                ("GET", f"/bookmarks/{first.json()['id']}", None),
            ],
        )
    )
    assert by_v2.status_code == 201 and by_v2.json()["description"] == "b"
    assert [(i["url"], i["description"]) for i in v2_list.json()["items"]] == [
        ("u2", "b"),
        ("u1", "a"),
    ]
    assert v2_first.json()["description"] == "a"
    v1_ready, v1_list, by_v1 = asyncio.run(
        _requests(
            v1,
            [
                ("GET", "/readyz", None),
                ("GET", "/bookmarks", None),
                ("POST", "/bookmarks", {"url": "u3", "note": "c"}),
            ],
        )
    )
    assert v1_ready.status_code == 200
    assert v1_ready.json()["checks"]["postgres"] == {
        "ok": True,
        "revision": "0002",
        "expected": "0001",
    }
    # v2 wrote note too, so v1 reads what v2 added.
    assert [(i["url"], i["note"]) for i in v1_list.json()["items"]] == [("u2", "b"), ("u1", "a")]
    assert by_v1.status_code == 201

    # 0003 (contract): v1 is done for; v2 keeps reading and writing, v1's last row included.
    repo.ok("migrate", "up", "--store", "postgres")
    v1_ready, v1_get = asyncio.run(
        _requests(v1, [("GET", "/readyz", None), ("GET", "/bookmarks/1", None)])
    )
    assert v1_ready.status_code == 503 and v1_get.status_code == 500
    assert v1_get.json() == {"detail": "database error: UndefinedColumn"}
    v2_ready, v2_add, v2_list = asyncio.run(
        _requests(
            v2,
            [
                ("GET", "/readyz", None),
                ("POST", "/bookmarks", {"url": "u4", "description": "d"}),
                ("GET", "/bookmarks?limit=10", None),
            ],
        )
    )
    assert v2_ready.status_code == 200 and v2_add.status_code == 201
    listed = v2_list.json()
    assert [(i["url"], i["description"]) for i in listed["items"]] == [
        ("u4", "d"),
        ("u3", "c"),
        ("u2", "b"),
        ("u1", "a"),
    ]
    assert listed["total"] == 4


@pytest.mark.usefixtures("bookmarks_app_importable")
def test_count_cache_and_the_v3_bad_regression(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    repo = open_repo(tmp_path, "v2", pg_url, redis_url)
    repo.ok("migrate", "up", "--store", "postgres")
    stores = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url}
    miss, hit, added, after = asyncio.run(
        _requests(
            {**stores, "BOOKMARKS_VARIANT": "v2"},
            [
                ("GET", "/bookmarks", None),
                ("GET", "/bookmarks", None),
                ("POST", "/bookmarks", {"url": "u1"}),
                ("GET", "/bookmarks", None),
            ],
        )
    )
    assert (miss.headers["x-cache"], miss.json()["total"]) == ("miss", 0)
    assert (hit.headers["x-cache"], hit.json()["total"]) == ("hit", 0)
    assert added.status_code == 201 and added.json()["description"] is None
    assert (after.headers["x-cache"], after.json()["total"]) == ("miss", 1)
    assert redis.Redis.from_url(redis_url).get("bm:cache:count") == b"1"

    bad = {**stores, "BOOKMARKS_VARIANT": "v3-bad", "BOOKMARKS_BAD_ERROR_RATE": "1"}
    started = time.monotonic()
    listed, one, health = asyncio.run(
        _requests(
            bad,
            [("GET", "/bookmarks", None), ("GET", "/bookmarks/1", None), ("GET", "/healthz", None)],
        )
    )
    assert time.monotonic() - started >= 0.4
    assert listed.status_code == 500
    assert one.status_code == 200 and health.status_code == 200


# -- the images, built offline from two commits (slow) --------------------------------


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.mark.slow
def test_v1_and_v2_images_from_two_commits(
    tmp_path: Path, pg_url: str, redis_url: str, engine: docker.DockerClient
) -> None:
    ensure_base_image(engine)
    repo = open_repo(tmp_path, "v1", pg_url, redis_url)
    service = f"bookmarks-{uuid.uuid4().hex[:8]}"
    repository = f"releasegate-test/{service}"
    blue, green = free_ports(2)
    repo.env.update(
        RELEASEGATE_SERVICE__NAME=service,
        RELEASEGATE_BUILD__REPOSITORY=repository,
        RELEASEGATE_DEPLOY__BLUE_PORT=str(blue),
        RELEASEGATE_DEPLOY__GREEN_PORT=str(green),
    )
    started = datetime.now(UTC)
    try:
        commit_v1 = git(repo.path, "rev-parse", "HEAD")
        image_v1 = repo.ok("build", "--offline", "--quiet", "--tag", "v1").strip()
        commit_v2 = advance(repo.path, "v2")
        # The wheels the build made stay out of the commit (the example's .gitignore).
        assert (repo.path / "app" / "wheels").is_dir()
        assert git(repo.path, "ls-files", "app/wheels") == ""
        image_v2 = repo.ok("build", "--offline", "--quiet", "--tag", "v2").strip()
        assert f"{repository}:{commit_v2[:12]}" in engine.images.get(image_v2).tags
        assert engine.images.get(f"{repository}:v1").id == image_v1

        # Commit 2's chain; the database where commit 1's release would leave it.
        repo.ok("migrate", "up", "--store", "postgres", "--to", "0001")
        repo.ok("deploy", "--color", "blue", "--image", image_v1)
        version = httpx.get(f"http://127.0.0.1:{blue}/version", timeout=5).json()
        assert (version["variant"], version["git_sha"]) == ("v1", commit_v1)
        ready = httpx.get(f"http://127.0.0.1:{blue}/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["checks"]["postgres"]["revision"] == "0001"

        # Expand, then v2 beside v1: each reads what the other wrote.
        repo.ok("migrate", "up", "--store", "postgres", "--to", "0002")
        repo.ok("deploy", "--color", "green", "--image", image_v2)
        version = httpx.get(f"http://127.0.0.1:{green}/version", timeout=5).json()
        assert (version["variant"], version["git_sha"]) == ("v2", commit_v2)
        assert httpx.get(f"http://127.0.0.1:{blue}/readyz", timeout=5).status_code == 200
        created = httpx.post(
            f"http://127.0.0.1:{blue}/bookmarks", json={"url": "u", "note": "n"}, timeout=5
        ).json()
        seen = httpx.get(f"http://127.0.0.1:{green}/bookmarks/{created['id']}", timeout=5)
        assert seen.json()["description"] == "n"
    finally:
        for container in engine.containers.list(
            all=True, filters={"label": f"releasegate.service={service}"}
        ):
            container.remove(force=True)
        for image in engine.images.list(name=repository):
            with contextlib.suppress(docker.errors.DockerException):
                engine.images.remove(image.attrs["Id"], force=True)
        # The dependency stage is kept by the engine as an untagged cache image.
        for image in engine.images.list(all=True, filters={"label": "releasegate.stage=deps"}):
            created_at = datetime.fromisoformat(image.attrs["Created"][:26].rstrip("Z") + "+00:00")
            if created_at >= started and not image.tags:
                with contextlib.suppress(docker.errors.DockerException):
                    engine.images.remove(image.attrs["Id"], force=True)
