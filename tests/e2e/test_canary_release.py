"""A canary release end to end: the example service on real Postgres, Redis, Docker and
HAProxy, judged on real traffic that an independent client (``hey``) sends through the
router the whole time. No synthetic gate runs (``release.slo_gate = false``).

v2 goes 5% -> 25% -> pause -> 50% -> 100% (``release --resume`` after the pause) and the
client sees no failed request; v3-bad is judged at its first step, the traffic goes back
to the old color and the release rolls back. Then v2 is released again, onto blue: with a
request minimum out of reach its first step fails at once and says why; and with the
router killed mid-step, the step waits for it, the traffic goes back as soon as it
answers, and the ledger records both; and paused once more, ``releasegate rollback``
undoes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from release_env import ReleaseEnv, Watcher, ensure_images, open_release_env, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("hey") is None, reason="the hey HTTP load client is needed"),
]

CANARY = """
[release.canary]
steps = ["5%", "25%", "pause", "50%", "100%"]
duration = "5s"
min_requests = 25
max_extensions = 2
"""
# Latency slack for a shared 2-core machine: a 250 ms regression is still far above it.
COMPARE = """
[slo.compare]
latency_slack = "60ms"
"""
# The client: 4 connections at up to 20 requests/s each through the router (about 60/s on
# this machine). HAProxy's weighted round robin gives the new color exactly its share: at
# 5%, 2 to 4 requests/s, short of min_requests in one 5 s window but not in two or three,
# so the first step is extended and the later ones are not.
CLIENT_WORKERS, CLIENT_RATE = 4, 20


@dataclass
class ClientResult:
    statuses: Counter[int]
    errors: int  # requests that got no HTTP response at all
    text: str

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.errors

    @property
    def failed(self) -> int:
        return self.errors + sum(n for status, n in self.statuses.items() if status >= 500)


class Client:
    """``hey`` sending GET /documents through the router until stopped."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            ["hey", "-z", "600s", "-c", str(CLIENT_WORKERS), "-q", str(CLIENT_RATE), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> ClientResult:
        # hey stops at SIGINT and prints its summary of what it sent.
        self.process.send_signal(signal.SIGINT)
        text, _ = self.process.communicate(timeout=60)
        statuses: Counter[int] = Counter(
            {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
        )
        errors_part = (
            text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
        )
        errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors_part, re.MULTILINE))
        return ClientResult(statuses, errors, text)


@pytest.fixture(scope="module")
def images() -> None:
    ensure_images()


@pytest.fixture
def canary_env(images: None, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[ReleaseEnv]:
    with open_release_env(tmp_path / "project", pg_url, redis_url) as env:
        env.config_path.write_text(env.config_path.read_text() + COMPARE + CANARY)
        env.env["RELEASEGATE_RELEASE__SLO_GATE"] = "false"
        yield env


def _canary_steps(data: dict[str, object]) -> list[dict[str, object]]:
    canary = data.get("canary")
    assert isinstance(canary, dict), data.keys()
    steps = canary["steps"]
    assert isinstance(steps, list)
    return steps


def test_canary_v2_passes_v3_bad_aborts_router_lost(canary_env: ReleaseEnv) -> None:
    env = canary_env
    client = Client(f"http://127.0.0.1:{env.ports['router']}/documents?limit=10")
    try:
        # -- v2 up to the pause: exit 5, the weight stays -------------------------------
        paused = env.run("release", "--image", "notes:v2", "--json")
        assert paused.returncode == 5, paused.stdout + paused.stderr
        data = json.loads(paused.stdout)
        assert data["outcome"] == "paused" and data["error"] is None
        assert [(s["name"], s["status"]) for s in data["steps"][-3:]] == [
            ("canary 5%", "ok"),
            ("canary 25%", "ok"),
            ("pause after 25%", "paused"),
        ]
        assert not [line for line in paused.stderr.splitlines() if line.startswith("error:")]
        assert "paused: pause after 25%" in paused.stderr
        assert env.last_release()["outcome"] == "paused"
        assert env.weights() == {"blue": 75, "green": 25}
        # Another release waits for this one to be continued or undone.
        refused = env.run("release", "--image", "notes:v3-bad", "--json")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "is paused mid-canary" in json.loads(refused.stdout)["error"]

        resumed = env.run("release", "--resume", "--json")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        data = json.loads(resumed.stdout)
        assert data["outcome"] == "succeeded"
        names = [s["name"] for s in data["steps"]]
        assert names[names.index("pause after 25%") :] == [
            "pause after 25%",
            "canary 50%",
            "promote",
            "watch",
            "finalize",
        ]
        steps = _canary_steps(data)
        assert [(s["weight"], s["verdict"]) for s in steps] == [
            (5, "pass"),
            (25, "pass"),
            (50, "pass"),
        ]
        assert steps[0]["extensions"] in (1, 2), steps[0]
        assert steps[1]["extensions"] == steps[2]["extensions"] == 0
        for step in steps:
            green, blue = step["green"], step["blue"]  # type: ignore[index]
            assert green["color"] == "green" and blue["color"] == "blue"
            assert green["requests"] >= 25 and blue["requests"] >= 25
            assert green["p95"] is not None and green["error_rate"] == 0
        assert env.weights() == {"blue": 0, "green": 100}
        assert env.container_colors() == {"green": "notes:v2"}
        md = env.root / ".releasegate" / "reports" / f"release-{data['release_id']}.md"
        assert "### Canary" in md.read_text()
    finally:
        v2_client = client.stop()
    assert v2_client.requests > 500, v2_client.text
    assert v2_client.failed == 0, v2_client.text
    durations = [(s["weight"], s["duration_s"]) for s in steps]
    print(f"v2: client {v2_client.requests} requests, {v2_client.failed} failed; steps {durations}")

    # -- v3-bad: aborted at its first step, traffic back to green, rolled back ----------
    client = Client(f"http://127.0.0.1:{env.ports['router']}/documents?limit=10")
    try:
        v3 = env.run("release", "--image", "notes:v3-bad", "--json")
    finally:
        v3_client = client.stop()
    assert v3.returncode == 1, v3.stdout + v3.stderr
    data = json.loads(v3.stdout)
    assert data["outcome"] == "rolled_back"
    assert data["error"].startswith("canary 5%: fail:"), data["error"]
    assert "traffic back to green" in data["error"]
    assert [s["name"] for s in data["steps"]][-2:] == ["canary 5%", "rollback"]
    [step] = _canary_steps(data)
    assert step["weight"] == 5 and step["verdict"] == "fail"
    assert data["rollback"]["ok"] is True
    assert env.weights() == {"blue": 0, "green": 100}
    assert env.container_colors() == {"green": "notes:v2"}
    # Only the 5% share reached v3-bad: a few of its requests failed, no more.
    assert v3_client.requests > 0 and v3_client.failed < v3_client.requests * 0.05
    print(
        f"v3-bad: client {v3_client.requests} requests, {v3_client.failed} failed;"
        f" step {step['duration_s']}s, green {step['green']}, {data['error']}"
    )

    # -- a minimum no step can reach at the observed rate: fails at once, says why -----
    client = Client(f"http://127.0.0.1:{env.ports['router']}/documents?limit=10")
    try:
        short = env.run(
            "release",
            "--image",
            "notes:v2",
            "--json",
            env={"RELEASEGATE_RELEASE__CANARY__MIN_REQUESTS": "100000"},
        )
    finally:
        client.stop()
    assert short.returncode == 1, short.stdout + short.stderr
    data = json.loads(short.stdout)
    assert data["outcome"] == "rolled_back"
    error = data["error"]
    assert error.startswith("canary 5%: inconclusive: blue served"), error  # v2 onto blue
    assert "requests/s on 5% of the traffic" in error and "min_requests = 100000" in error
    [step] = _canary_steps(data)
    assert step["extensions"] == 0 and step["duration_s"] < 15  # no extension was waited for
    assert env.weights() == {"blue": 0, "green": 100}

    # -- the router dies mid-step: back to green as soon as it answers again -----------
    def kill_and_restart() -> None:
        pid = int(env.run_json("router", "status")["pid"])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: env.run("router", "status").returncode != 0, 10)
        restarted = env.run("router", "up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr

    watcher = Watcher(lambda: env.weights().get("blue") == 5, kill_and_restart)
    watcher.start()
    # v2's digest was rolled back just above: it is released again only with --force.
    lost = env.run("release", "--image", "notes:v2", "--force", "--json")
    watcher.join(timeout=60)
    assert watcher.fired and watcher.error is None, watcher.error
    assert lost.returncode == 1, lost.stdout + lost.stderr
    data = json.loads(lost.stdout)
    assert data["outcome"] == "rolled_back"
    assert "router stopped answering" in data["error"], data["error"]
    router_events = [
        e["detail"]["router"]
        for e in env.events(data["release_id"])
        if e["step"] == "canary 5%" and e["status"] == "info"
    ]
    assert router_events == ["unreachable", "answered"]
    assert env.weights() == {"blue": 0, "green": 100}

    # -- paused, then undone by hand instead of resumed ----------------------------------
    client = Client(f"http://127.0.0.1:{env.ports['router']}/documents?limit=10")
    try:
        paused = env.run(
            "release",
            "--image",
            "notes:v2",
            "--force",
            "--json",
            env={"RELEASEGATE_RELEASE__CANARY__STEPS": '["5%", "pause", "100%"]'},
        )
    finally:
        client.stop()
    assert paused.returncode == 5, paused.stdout + paused.stderr
    release_id = json.loads(paused.stdout)["release_id"]
    assert env.weights() == {"blue": 5, "green": 95}
    undone = env.run("rollback", "--json")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    data = json.loads(undone.stdout)
    assert data["outcome"] == "rolled_back" and data["rollback"]["ok"] is True
    assert [s["name"] for s in data["rollback"]["steps"]][:2] == [
        "traffic back to green",
        "stop blue",
    ]
    assert [r["outcome"] for r in env.releases() if r["id"] == release_id] == ["rolled_back"]
    assert env.weights() == {"blue": 0, "green": 100}
    assert env.container_colors() == {"green": "notes:v2"}
