"""One release over ``ssh://`` against the same release on this machine's engine.

The bookmarks example (``examples/bookmarks`` at its v2 stage, a git repository of its
own per side) is built once, offline, and pushed to the simulated remote host's
registry; both sides release that digest with the example's own gate (warm-up, SLO
window and watch as in its ``releasegate.toml``, or ``--gate-s``):

- **local**: the engine of this machine, the router in a container on it (bound to
  127.0.0.1), the stores on this machine (Postgres of ``RELEASEGATE_TEST_PG_URL``, a
  throwaway redis-server);
- **remote**: ``DOCKER_HOST=ssh://`` to the simulated host (scripts/lib/remote-host.sh),
  the router in a container there bound to the host's address, the host's Postgres and
  Redis, smoke, gate and watch through the ssh tunnel.

Each side first deploys the digest (a first release, timed on its own: the remote host
pulls the image then), then ``--rounds`` releases of the same digest follow, local and
remote in turn so that drift hits both alike. Printed: the wall time of the command and
the ``release --json`` duration, their ratio remote/local (target <= 1.3x), and the time
of every pipeline step on both sides, so the figure says where the overhead is.

Traffic goes only to 127.0.0.1 and the remote host's address; every release is bounded
by its gate. Everything is removed at the end: containers, routers and their volumes,
databases, Redis data, the pushed image.

python benchmarks/remote_release.py [--rounds 3] [--gate-s 15] [--port-base 19380]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psycopg
import redis
from _common import BIN, REPO_ROOT, checkout_env, free_port, redis_server, scratch_db, server_url
from _remote import RemoteHost, load_on_remote, remote_host, ssh_env
from bookmarks_repo import make_bookmarks_repo
from psycopg import sql

SERVICE = "bmbench"
REMOTE_DATABASE = "rgbench_remote_release"
REMOTE_REDIS_DB = 9
RELEASEGATE = str(BIN / "releasegate")
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "bookmarks" / "releasegate.toml"


@dataclass
class Side:
    """One place the release goes to: its repository copy and the environment to use."""

    name: str
    repo: Path
    env: dict[str, str]
    docker_env: dict[str, str]  # for the docker CLI to reach that side's engine

    @property
    def config(self) -> Path:
        return self.repo / "releasegate.toml"


@dataclass
class Timing:
    wall_s: float
    duration_s: float
    steps: dict[str, float]
    switch_s: float  # the router's promote() within the promote step


def base_env() -> dict[str, str]:
    """This process's environment without anything that would pick a config or an engine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELEASEGATE_", "GITHUB_")) and k != "DOCKER_HOST"
    }
    return {
        **checkout_env(env),
        "RELEASEGATE_SERVICE__NAME": SERVICE,
        "RELEASEGATE_BUILD__REPOSITORY": f"releasegate-bench/{SERVICE}",
    }


def gate_env(gate_s: float | None) -> dict[str, str]:
    """The SLO window of ``gate_s`` seconds, its minimum request count scaled with it."""
    if gate_s is None:
        return {}
    slo = tomllib.loads(EXAMPLE_CONFIG.read_text())["slo"]
    window_s = float(slo["duration"].removesuffix("s"))
    min_requests = max(1, round(slo["min_requests"] * gate_s / window_s))
    return {
        "RELEASEGATE_SLO__DURATION": f"{gate_s:g}s",
        "RELEASEGATE_SLO__MIN_REQUESTS": str(min_requests),
    }


def router_env(image: str, bind: str, blue: int, green: int) -> dict[str, str]:
    return {
        "RELEASEGATE_ROUTER__MODE": "container",
        "RELEASEGATE_ROUTER__IMAGE": image,
        "RELEASEGATE_ROUTER__BIND": bind,
        "RELEASEGATE_DEPLOY__BLUE_PORT": str(blue),
        "RELEASEGATE_DEPLOY__GREEN_PORT": str(green),
    }


def build_and_push(repo: Path, registry: str) -> str:
    """The example built offline here, pushed to ``registry``: its digest reference."""
    built = subprocess.run(
        [RELEASEGATE, "--config", str(repo / "releasegate.toml"), "build", "--offline",
         "--quiet", "--tag", "bench"],
        env=base_env(), cwd=repo, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        sys.exit(f"build failed: {built.stderr.strip()[-1500:]}")
    repository = f"{registry}/{SERVICE}"
    runner = docker.from_env()
    runner.images.get(built.stdout.strip()).tag(repository, tag="bench")
    runner.images.push(repository, tag="bench")
    digests = runner.images.get(f"{repository}:bench").attrs["RepoDigests"]
    pushed = [d for d in digests if d.startswith(f"{repository}@")]
    if not pushed:
        sys.exit(f"the image was not pushed to {repository}")
    return str(pushed[0])


def release(side: Side, image: str) -> Timing:
    """``release --image IMAGE --json`` on ``side``; exits unless it succeeded."""
    started = time.perf_counter()
    done = subprocess.run(
        [RELEASEGATE, "--config", str(side.config), "release", "--image", image, "--json"],
        env=side.env, cwd=side.repo, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        sys.exit(
            f"{side.name} release printed no result ({done.returncode}):\n{done.stderr[-1500:]}"
        )
    if result.get("outcome") != "succeeded":
        sys.exit(f"{side.name} release: {result.get('outcome')}: {result.get('error')}")
    steps = {step["name"]: float(step["duration_s"]) for step in result["steps"]}
    switch_s = float(result["router"][-1]["duration_ms"]) / 1000
    return Timing(wall, float(result["duration_s"]), steps, switch_s)


@contextmanager
def remote_stores(host: RemoteHost) -> Iterator[tuple[str, str]]:
    """A fresh database and an empty Redis DB on the remote host's servers."""
    admin = host.postgres_url
    with psycopg.connect(admin, autocommit=True) as conn:
        name = sql.Identifier(REMOTE_DATABASE)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    redis_url = host.redis_url.rpartition("/")[0] + f"/{REMOTE_REDIS_DB}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield admin.rpartition("/")[0] + f"/{REMOTE_DATABASE}", redis_url
    finally:
        client.flushdb()
        client.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(REMOTE_DATABASE)
                )
            )


@contextmanager
def removed_at_end(side: Side) -> Iterator[None]:
    """Take the side's router and colors down at the end, whatever happened."""
    try:
        yield
    finally:
        subprocess.run(
            [RELEASEGATE, "--config", str(side.config), "router", "down", "--forget"],
            env=side.env, cwd=side.repo, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        names = [f"{SERVICE}-blue", f"{SERVICE}-green", f"releasegate-router-{SERVICE}"]
        for args in (["rm", "--force", *names], ["volume", "rm", "--force", names[-1]]):
            subprocess.run(
                ["docker", *args], env=side.docker_env, capture_output=True, timeout=120,
                check=False,
            )  # fmt: skip


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.0f} ms"


def report(first: dict[str, Timing], rounds: dict[str, list[Timing]]) -> None:
    local, remote = rounds["local"], rounds["remote"]

    def median(timings: list[Timing], key: str) -> float:
        return float(statistics.median(getattr(t, key) for t in timings))

    print()
    print("first release (deploy blue, nothing live before; the remote host pulls the image)")
    for side, timing in first.items():
        print(f"  {side:<7} wall {ms(timing.wall_s)}   release {ms(timing.duration_s)}")
    print()
    print(f"release of the same digest, blue live (median of {len(local)} each)")
    print(f"  {'':<34}{'local':>12}{'remote':>12}{'remote - local':>16}{'ratio':>8}")
    for label, key in (
        ("command wall time", "wall_s"),
        ("release duration (--json)", "duration_s"),
    ):
        a, b = median(local, key), median(remote, key)
        print(f"  {label:<34}{ms(a):>12}{ms(b):>12}{ms(b - a):>16}{b / a:7.2f}x")
    print("  by step:")
    names = list(local[0].steps)
    names += [name for name in remote[0].steps if name not in names]
    for name in names:
        a = statistics.median(t.steps.get(name, 0.0) for t in local)
        b = statistics.median(t.steps.get(name, 0.0) for t in remote)
        step_ratio = f"{b / a:7.2f}x" if a > 0 else f"{'-':>8}"
        print(f"    {name:<32}{ms(a):>12}{ms(b):>12}{ms(b - a):>16}{step_ratio}")
    a, b = median(local, "switch_s"), median(remote, "switch_s")
    print(f"    {'  of which the router promote()':<32}{ms(a):>12}{ms(b):>12}{ms(b - a):>16}")
    outside = {
        side: statistics.median(t.wall_s - sum(t.steps.values()) for t in timings)
        for side, timings in rounds.items()
    }
    a, b = outside["local"], outside["remote"]
    print(f"    {'outside the steps (start, connect)':<32}{ms(a):>12}{ms(b):>12}{ms(b - a):>16}")
    ratio = median(remote, "wall_s") / median(local, "wall_s")
    print(f"  target <= 1.3x: {'met' if ratio <= 1.3 else 'MISSED'} ({ratio:.2f}x wall time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="measured releases per side")
    parser.add_argument(
        "--gate-s", type=float, default=None, help="SLO window (default: the example's)"
    )
    parser.add_argument("--port-base", type=int, default=19380, help="remote router; colors +1, +2")
    args = parser.parse_args()
    from conftest import ensure_base_image, local_haproxy_image

    host = remote_host()
    pg_server = server_url()
    router_image = local_haproxy_image()
    load_on_remote(host, router_image)
    ensure_base_image(docker.from_env())
    runner = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="rgbench-remote-release-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        local_repo = make_bookmarks_repo(work / "local", "v2")
        remote_repo = make_bookmarks_repo(work / "remote", "v2")
        image = build_and_push(local_repo, host.registry)
        stack.callback(remove_images, runner, host, image)
        print(f"image {image}")

        local_pg = stack.enter_context(scratch_db(pg_server))
        local_redis = stack.enter_context(redis_server())
        blue, green, public = free_port(), free_port(), free_port()
        local_env = {
            **base_env(),
            **gate_env(args.gate_s),
            **router_env(router_image, f"127.0.0.1:{public}", blue, green),
            "DATABASE_URL": local_pg,
            "REDIS_URL": f"redis://127.0.0.1:{local_redis}/0",
        }
        local = Side("local", local_repo, local_env, base_env())
        remote_db, remote_redis = stack.enter_context(remote_stores(host))
        base = args.port_base
        remote_env = {
            **ssh_env(host),
            **base_env(),
            **gate_env(args.gate_s),
            **router_env(router_image, f"{host.address}:{base}", base + 1, base + 2),
            "DATABASE_URL": remote_db,
            "REDIS_URL": remote_redis,
        }
        remote = Side("remote", remote_repo, remote_env, host.docker_env())
        stack.enter_context(removed_at_end(local))
        stack.enter_context(removed_at_end(remote))

        first = {side.name: release(side, image) for side in (local, remote)}
        rounds: dict[str, list[Timing]] = {"local": [], "remote": []}
        for number in range(args.rounds):
            for side in (local, remote):
                timing = release(side, image)
                rounds[side.name].append(timing)
                print(f"round {number + 1} {side.name:<6} wall {ms(timing.wall_s)}", flush=True)
    report(first, rounds)


def remove_images(runner: docker.DockerClient, host: RemoteHost, image: str) -> None:
    """The pushed image, here and on the remote host (by its repository)."""
    repository = image.partition("@")[0]
    for pulled in host.docker("images", "--quiet", repository).stdout.split():
        host.docker("image", "rm", "--force", pulled)
    for name in (repository, f"releasegate-bench/{SERVICE}"):
        for found in runner.images.list(name=name):
            if found.id:
                runner.images.remove(found.id, force=True)


if __name__ == "__main__":
    main()
