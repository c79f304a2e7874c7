"""The Locust SLO gate against real HTTP servers on 127.0.0.1, with real Locust processes.

Each Locust run is a few seconds (1 s warm-up + 3 s window). The fast suite has two:
a passing run through the CLI and a run failing on latency. The others are slow.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from conftest import free_port

from releasegate.cli import main
from releasegate.config import SloSection, load_config
from releasegate.errors import ConfigError
from releasegate.gates.locust_runner import LocustPlan, run_locust, worker_command
from releasegate.gates.slo import run_gate, run_slo_gate
from releasegate.gates.slo_verdicts import Verdict


class LoadServer(ThreadingHTTPServer):
    """Answers GET /work after ``delay_ms``; every ``fail_every``-th request gets a 500."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, delay_ms: float = 0.0, fail_every: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _LoadHandler)
        self.delay_ms = delay_ms
        self.fail_every = fail_every
        self.count = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _LoadHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: LoadServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.count += 1
            number = srv.count
        if srv.delay_ms:
            time.sleep(srv.delay_ms / 1000)
        failed = srv.fail_every and number % srv.fail_every == 0
        body = b"boom" if failed else b"ok"
        self.send_response(500 if failed else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def serve() -> Iterator[Callable[..., LoadServer]]:
    servers: list[LoadServer] = []

    def start(delay_ms: float = 0.0, fail_every: int = 0) -> LoadServer:
        srv = LoadServer(delay_ms, fail_every)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


LOCUSTFILE = """\
from locust import FastHttpUser, constant_throughput, task


class Worker(FastHttpUser):
    wait_time = constant_throughput({per_user_rps})

    @task
    def work(self):
        self.client.get("/work", name="GET /work")
"""


DEFAULT_SLO: dict[str, Any] = {
    "users": 5,
    "spawn_rate": 5,
    "warmup": "1s",
    "duration": "3s",
    "min_requests": 50,
}


def project(
    tmp_path: Path,
    thresholds: dict[str, list[str]],
    *,
    per_user_rps: float = 20,
    locustfile: str | None = None,
    compare: dict[str, Any] | None = None,
    **slo: Any,
) -> Path:
    """A config folder with a locustfile; returns the config path."""
    (tmp_path / "loadtests").mkdir(exist_ok=True)
    source = locustfile if locustfile is not None else LOCUSTFILE.format(per_user_rps=per_user_rps)
    (tmp_path / "loadtests" / "locustfile.py").write_text(source)

    def toml(values: dict[str, Any]) -> str:
        return "".join(
            f"{json.dumps(key)} = {json.dumps(value)}\n" for key, value in values.items()
        )

    text = '[service]\nname = "notes"\n\n[slo]\n' + toml({**DEFAULT_SLO, **slo})
    text += "\n[slo.thresholds]\n" + toml(thresholds)
    if compare:
        text += "\n[slo.compare]\n" + toml(compare)
    config = tmp_path / "releasegate.toml"
    config.write_text(text)
    return config


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


# -- fast: two short Locust runs ------------------------------------------------------


def test_passing_run_through_the_cli(
    tmp_path: Path, serve: Callable[..., LoadServer], capsys: pytest.CaptureFixture[str]
) -> None:
    srv = serve(delay_ms=2)
    config = project(
        tmp_path,
        {
            "total": ["p95 < 250ms", "error_rate < 1%", "requests >= 50"],
            "GET /work": ["p99 <= 500ms", "rps > 5"],
        },
    )
    junit = tmp_path / "reports" / "slo.xml"
    out_dir = tmp_path / "out"
    code, out, err = cli(
        [
            "--config",
            str(config),
            "gate",
            "--target",
            srv.url,
            "--json",
            "--junit",
            str(junit),
            "--out",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0, out + err
    data = json.loads(out)
    assert data["verdict"] == "pass"
    assert [r["verdict"] for r in data["rules"]] == ["pass"] * 5
    run = data["run"]
    window = run["window"]
    assert window["source"] == "plugin"
    # The warm-up is left out: the window saw fewer requests than the server did.
    assert 50 <= window["requests"] < srv.count
    assert run["saturated"] is False and run["aborted"] is None
    for key in ("html_report", "stats_csv", "stats_history_csv", "failures_csv", "window_json"):
        assert Path(run["paths"][key]).is_file(), key
    assert Path(run["paths"]["html_report"]).parent == out_dir.resolve()
    history = Path(run["paths"]["stats_history_csv"]).read_text()
    assert "GET /work" in history  # --csv-full-history: per-endpoint rows
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "5" and suite.get("failures") == "0" and suite.get("errors") == "0"


def test_failing_run_on_latency(tmp_path: Path, serve: Callable[..., LoadServer]) -> None:
    srv = serve(delay_ms=120)
    config = project(tmp_path, {"total": ["p95 < 60ms", "error_rate < 1%"]}, per_user_rps=5)
    result = run_gate(load_config(config, {}), srv.url, out_dir=tmp_path / "out")
    assert result.verdict is Verdict.FAIL
    p95, errors = result.rules
    assert p95.verdict is Verdict.FAIL and p95.observed is not None and p95.observed >= 120
    assert errors.verdict is Verdict.PASS and errors.observed == 0.0
    assert re.fullmatch(r"total: p95 < 60ms \(observed \d+\.\dms\)", result.reasons[0])
    text = result.render_text()
    assert text.startswith("SLO gate: FAIL") and "GET /work" in text


# -- fast: errors before any load ------------------------------------------------------


def test_locustfile_syntax_error_is_a_config_error_with_no_load(
    tmp_path: Path, serve: Callable[..., LoadServer], capsys: pytest.CaptureFixture[str]
) -> None:
    srv = serve()
    config = project(
        tmp_path, {"total": ["p95 < 1s"]}, locustfile="from locust import task\ndef broken(:\n"
    )
    code, _, err = cli(["--config", str(config), "gate", "--target", srv.url], capsys)
    assert code == 2
    assert err.startswith("error: locustfile locustfile.py line 2: syntax error")
    assert srv.count == 0
    assert not (tmp_path / ".releasegate").exists()


def test_locustfile_import_error_is_a_config_error_with_no_load(
    tmp_path: Path, serve: Callable[..., LoadServer]
) -> None:
    srv = serve()
    config = project(
        tmp_path,
        {"total": ["p95 < 1s"]},
        locustfile="import no_such_module_for_releasegate\n",
    )
    with pytest.raises(ConfigError) as info:
        run_gate(load_config(config, {}), srv.url, out_dir=tmp_path / "out")
    message = str(info.value)
    assert "Locust could not load locustfile.py (no load was sent)" in message
    assert "no_such_module_for_releasegate" in message
    assert srv.count == 0


def test_malformed_threshold_is_a_config_error_before_anything_runs(
    tmp_path: Path, serve: Callable[..., LoadServer], capsys: pytest.CaptureFixture[str]
) -> None:
    srv = serve()
    config = project(tmp_path, {"total": ["p95 < 300ms"], "GET /work": ["p95 < 300"]})
    code, _, err = cli(["--config", str(config), "gate", "--target", srv.url], capsys)
    assert code == 2
    assert "invalid threshold 'p95 < 300': p95 needs a unit" in err
    assert srv.count == 0
    # The core function checks again for sections built in code.
    slo = SloSection.model_construct(
        **{**SloSection().model_dump(), "thresholds": {"total": ["p95 << 3ms"]}}
    )
    with pytest.raises(ConfigError, match="unknown operator '<<'"):
        run_slo_gate(slo, tmp_path, srv.url, out_dir=tmp_path / "out")
    assert srv.count == 0 and not (tmp_path / "out").exists()


def test_gate_needs_rules_and_a_target(tmp_path: Path) -> None:
    config = project(tmp_path, {})
    with pytest.raises(ConfigError, match=r"slo\.thresholds is empty"):
        run_gate(load_config(config, {}), "http://127.0.0.1:9")
    config = project(tmp_path, {"total": ["p95 < 1s"]})
    with pytest.raises(ConfigError, match="no target"):
        run_gate(load_config(config, {}), None)
    with pytest.raises(ConfigError, match="invalid target URL"):
        run_gate(load_config(config, {}), "127.0.0.1:9")


# -- slow: more Locust runs -------------------------------------------------------------


@pytest.mark.slow
def test_unreachable_target_fails_on_error_rate(tmp_path: Path) -> None:
    config = project(tmp_path, {"total": ["error_rate < 1%", "p95 < 1s"]}, per_user_rps=10)
    result = run_gate(load_config(config, {}), f"http://127.0.0.1:{free_port()}")
    assert result.verdict is Verdict.FAIL
    errors = result.rules[0]
    assert errors.verdict is Verdict.FAIL and errors.observed == 1.0
    assert result.run.failures and "onnection refused" in result.run.failures[0].error


@pytest.mark.slow
def test_error_rate_from_server_errors(tmp_path: Path, serve: Callable[..., LoadServer]) -> None:
    srv = serve(fail_every=10)
    config = project(tmp_path, {"total": ["error_rate < 5%"], "GET /work": ["error_rate >= 5%"]})
    result = run_gate(load_config(config, {}), srv.url, out_dir=tmp_path / "out")
    assert result.verdict is Verdict.FAIL
    assert [r.verdict for r in result.rules] == [Verdict.FAIL, Verdict.PASS]
    assert result.rules[0].observed == pytest.approx(0.1, abs=0.02)


@pytest.mark.slow
def test_early_abort_stops_a_badly_failing_run(
    tmp_path: Path, serve: Callable[..., LoadServer]
) -> None:
    srv = serve(delay_ms=200)
    config = project(
        tmp_path,
        {"total": ["p95 < 20ms"]},
        per_user_rps=10,
        abort_factor=3,
        duration="40s",
        min_requests=20,
    )
    result = run_gate(load_config(config, {}), srv.url, out_dir=tmp_path / "out")
    assert result.verdict is Verdict.FAIL
    assert result.run.aborted is not None and "p95 < 20ms" in result.run.aborted
    assert result.reasons[0].startswith("aborted early: total: p95 < 20ms observed")
    assert result.run.window is not None and result.run.window.duration_s < 20


@pytest.mark.slow
def test_comparative_gate(tmp_path: Path, serve: Callable[..., LoadServer]) -> None:
    blue = serve(delay_ms=5)
    slow_green = serve(delay_ms=80)
    same_green = serve(delay_ms=5)
    config = project(
        tmp_path,
        {"total": ["p95 < 500ms", "error_rate < 1%"]},
        per_user_rps=15,
        users=6,
        min_requests=40,
        compare={"latency_margin": "20%", "latency_slack": "10ms"},
    )
    settings = load_config(config, {})
    worse = run_gate(settings, slow_green.url, compare_with=blue.url, out_dir=tmp_path / "a")
    assert worse.verdict is Verdict.FAIL
    assert all(r.verdict is Verdict.PASS for r in worse.rules)  # absolute rules pass
    p95 = worse.comparisons[0]
    assert p95.metric == "p95" and p95.verdict is Verdict.FAIL
    assert p95.candidate is not None and p95.allowed is not None and p95.candidate > p95.allowed
    assert worse.baseline_run is not None and worse.run.plan.users == 3
    assert (tmp_path / "a" / "blue" / "locust_stats.csv").is_file()
    assert (tmp_path / "a" / "green" / "locust_stats.csv").is_file()
    assert blue.count > 0 and slow_green.count > 0

    same = run_gate(settings, same_green.url, compare_with=blue.url, out_dir=tmp_path / "b")
    assert same.verdict is Verdict.PASS, same.render_text()
    assert [c.verdict for c in same.comparisons] == [Verdict.PASS, Verdict.PASS]
    assert "comparison" in same.render_text()


@pytest.mark.slow
def test_distributed_processes_merge_the_window(
    tmp_path: Path, serve: Callable[..., LoadServer]
) -> None:
    srv = serve(delay_ms=2)
    config = project(tmp_path, {"total": ["p95 < 250ms", "requests >= 50"]}, processes=2)
    result = run_gate(load_config(config, {}), srv.url, out_dir=tmp_path / "out")
    assert result.verdict is Verdict.PASS, result.render_text()
    assert "--processes" in result.run.plan.command()
    assert result.run.window is not None and result.run.window.source == "plugin"
    assert 50 <= result.run.window.requests < srv.count


@pytest.mark.slow
def test_external_worker_feeds_the_master(tmp_path: Path, serve: Callable[..., LoadServer]) -> None:
    srv = serve(delay_ms=2)
    port = free_port()
    config = project(
        tmp_path,
        {"total": ["p95 < 250ms", "requests >= 50"]},
        workers=1,
        master_bind_port=port,
    )
    locustfile = tmp_path / "loadtests" / "locustfile.py"
    worker = subprocess.Popen(
        worker_command(locustfile, "127.0.0.1", port),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = run_gate(load_config(config, {}), srv.url, out_dir=tmp_path / "out")
        assert worker.wait(timeout=30) is not None  # the master tells it to quit
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert result.verdict is Verdict.PASS, result.render_text()
    assert "--master" in result.run.plan.command()
    window = result.run.window
    assert window is not None and window.source == "plugin"
    assert 50 <= window.requests < srv.count


CPU_BURNER = """\
import time
from locust import User, constant, task


class Burner(User):
    wait_time = constant(0)

    @task
    def burn(self):
        started = time.perf_counter()
        while time.perf_counter() - started < 0.05:
            pass
        self.environment.events.request.fire(
            request_type="CPU", name="burn", response_time=50, response_length=0,
            exception=None, context={}, start_time=time.time() - 0.05,
        )
"""


@pytest.mark.slow
def test_saturated_load_generator_is_inconclusive(tmp_path: Path) -> None:
    config = project(tmp_path, {"total": ["p95 < 1s"]}, locustfile=CPU_BURNER, duration="9s")
    result = run_gate(load_config(config, {}), "http://127.0.0.1:9", out_dir=tmp_path / "out")
    assert result.run.saturated
    assert result.verdict is Verdict.INCONCLUSIVE
    assert any("the load generator was saturated" in reason for reason in result.reasons)
    assert result.rules[0].note == "would pass; the run is not conclusive"


@pytest.mark.slow
def test_wall_clock_timeout_stops_locust(tmp_path: Path, serve: Callable[..., LoadServer]) -> None:
    srv = serve()
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE.format(per_user_rps=5))
    plan = LocustPlan(
        locustfile=tmp_path / "locustfile.py",
        host=srv.url,
        out_dir=tmp_path / "out",
        users=2,
        spawn_rate=2,
        warmup=1,
        duration=30,
        timeout=4,
    )
    run = run_locust(plan)
    assert run.timed_out
    assert run.window is not None and run.window.duration_s < 10
