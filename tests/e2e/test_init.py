"""``releasegate init`` on a copy of each example service: the files it writes pass
``releasegate config check``, the GitHub workflow schema and zizmor; a second run keeps
everything; ``--force`` writes again; bad input is one error line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLES = [name for name in ("app", "bookmarks") if (ROOT / "examples" / name).is_dir()]
WORKFLOWS = [
    ".github/workflows/releasegate-staging.yml",
    ".github/workflows/releasegate-production.yml",
    ".github/workflows/releasegate-rollback.yml",
]
WRITTEN = [
    "releasegate.toml",
    "releasegate.production.toml",
    "smoke.toml",
    "loadtests/locustfile.py",
    *WORKFLOWS,
]
OWN_FILES = ("releasegate.toml", "releasegate.production.toml", "smoke.toml", "loadtests")


def _tool(name: str) -> str:
    return shutil.which(name) or str(BIN / name)


def _run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELEASEGATE_")}
    return subprocess.run(
        [str(BIN / "releasegate"), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text(errors="replace")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(params=EXAMPLES)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A copy of the example as a repository before releasegate: its own releasegate
    files (config, smoke file, load test) left out; the app and migrations kept."""
    folder = tmp_path / f"{request.param}-service"
    shutil.copytree(
        ROOT / "examples" / request.param,
        folder,
        ignore=shutil.ignore_patterns("__pycache__", "wheels", ".pytest_cache", *OWN_FILES),
    )
    return folder


def test_init_writes_a_setup_that_passes_every_check(service: Path) -> None:
    first = _run("init", cwd=service)
    assert first.returncode == 0, first.stdout + first.stderr
    for path in WRITTEN:
        assert f"  wrote  {path}\n" in first.stdout
        assert (service / path).is_file()
    name = service.name
    assert first.stdout.rstrip().splitlines()[-1] == (
        f"next: releasegate build --tag {name}:v1 && releasegate release --image {name}:v1"
    )
    assert ".releasegate/" in (service / ".gitignore").read_text().splitlines()
    assert first.stderr == ""

    check = _run("config", "check", cwd=service, env={"DATABASE_URL": "postgresql://u@h/db"})
    assert check.returncode == 0, check.stdout + check.stderr
    production = _run(
        "config",
        "check",
        "--json",
        cwd=service,
        env={"DATABASE_URL": "postgresql://u@h/db", "RELEASEGATE_ENVIRONMENT": "production"},
    )
    assert production.returncode == 0, production.stdout + production.stderr
    resolved = json.loads(production.stdout)
    assert resolved["environment_config"] == str(service / "releasegate.production.toml")
    assert resolved["router"]["mode"] == "container"

    schema = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *WORKFLOWS],
        cwd=service,
        capture_output=True,
        text=True,
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN")}
    audit = subprocess.run(
        [_tool("zizmor"), "--offline", "--no-progress", "--color=never", "."],
        cwd=service,
        capture_output=True,
        text=True,
        env={**env, "NO_COLOR": "1"},
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    for path in WORKFLOWS:
        assert path in audit.stderr, audit.stderr  # audited, not skipped

    # Again: every file is kept as it is, the .gitignore too.
    before = _snapshot(service)
    again = _run("init", cwd=service)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "  wrote  " not in again.stdout and ".gitignore: added" not in again.stdout
    for path in WRITTEN:
        assert f"  kept   {path} (it exists; --force overwrites it)\n" in again.stdout
    assert _snapshot(service) == before

    # --force writes the files again; the .gitignore gets no second entry.
    (service / "smoke.toml").write_text("# edited\n")
    forced = _run("init", "--force", "--dir", str(service), cwd=service.parent)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "  wrote  smoke.toml\n" in forced.stdout
    assert _snapshot(service) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dir", "missing"], "does not exist"),
        (["--service", "Not Valid"], "invalid service name"),
        (["--stores", "redis"], "must include postgres"),
        (["--dir", "empty"], "no Dockerfile"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(
    service: Path, args: list[str], message: str
) -> None:
    (service / "empty").mkdir()
    before = _snapshot(service)
    result = _run("init", *args, cwd=service)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert _snapshot(service) == before
