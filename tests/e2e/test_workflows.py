"""The GitHub Actions workflows: schema, security rules, the preflight's bad-input checks
and the promoted-digest lookup against a real registry. The act runs of a separate caller
repository are in test_caller_workflows.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
NAMES = [
    "release.yml",
    "rollback.yml",
    "staging.yml",
    "production.yml",
    "production-rollback.yml",
    "ci.yml",
]
PREFLIGHT = ROOT / "scripts" / "ci" / "preflight.sh"
BIN = Path(sys.executable).parent


def _load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    # PyYAML reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def _steps(data: dict[Any, Any]) -> list[dict[str, Any]]:
    return [s for job in data["jobs"].values() for s in job.get("steps", [])]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_matches_the_schema(name: str) -> None:
    tool = shutil.which("check-jsonschema") or str(BIN / "check-jsonschema")
    proc = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(WORKFLOWS / name)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_when_installed() -> None:
    tool = shutil.which("actionlint")
    if tool is None:
        pytest.skip("actionlint is not installed")
    proc = subprocess.run(
        [tool, *[str(WORKFLOWS / n) for n in NAMES]], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_nothing_unexplained() -> None:
    """zizmor's audit of every workflow and composite action in the repository, offline (no
    GitHub API); a deliberate exception carries a `# zizmor: ignore[rule]` and its reason."""
    tool = shutil.which("zizmor") or str(BIN / "zizmor")
    if not Path(tool).exists():
        pytest.fail("zizmor is not installed: it is a dev extra (pip install -e '.[dev]')")
    env = {k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN")}
    proc = subprocess.run(
        [tool, "--offline", "--no-progress", "--color=never", "."],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # It did audit the workflows (a wrong input would audit nothing and pass).
    for name in NAMES:
        assert f".github/workflows/{name}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", NAMES)
def test_remote_actions_are_pinned_to_full_shas(name: str) -> None:
    for step in _steps(_load(name)):
        uses = step.get("uses")
        if uses and not uses.startswith("./"):
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses), uses


@pytest.mark.parametrize("name", NAMES)
def test_permissions_are_minimal_per_job(name: str) -> None:
    data = _load(name)
    assert data.get("permissions") == {}, "the workflow grants nothing by default"
    for job_id, job in data["jobs"].items():
        assert "permissions" in job, f"job {job_id} states its permissions"
        for scope, level in (job["permissions"] or {}).items():
            assert level in ("read", "write"), (job_id, scope)
            assert scope in {"contents", "packages", "deployments"}, (job_id, scope)


@pytest.mark.parametrize("name", NAMES)
def test_expressions_reach_the_shell_only_through_env(name: str) -> None:
    for step in _steps(_load(name)):
        script = step.get("run", "")
        assert "${{" not in script, f"step {step.get('name')!r} expands an expression in run:"


def test_release_workflow_interface() -> None:
    data = _load("release.yml")
    call = data["on"]["workflow_call"]
    inputs = call["inputs"]
    for name in ("image", "version", "environment", "config", "gate-profile", "dry-run", "target"):
        assert name in inputs
    assert inputs["qdrant"]["default"] == "service"
    assert {"REGISTRY_TOKEN", "DOCKER_HOST", "DATABASE_URL", "REDIS_URL"} <= set(call["secrets"])
    assert {"release-id", "outcome", "digest", "report"} <= set(call["outputs"])
    jobs = data["jobs"]
    assert jobs["release"]["needs"] == "build"
    assert set(jobs["release"]["services"]) == {"postgres", "redis", "qdrant"}
    assert jobs["release"]["concurrency"]["cancel-in-progress"] is False
    names = [s.get("name", "") for s in jobs["release"]["steps"]]
    assert any("Roll back" in n for n in names)
    assert any("evidence" in n for n in names)
    # A canary pause: a job of its own, held by the approval environment's reviewers.
    resume = jobs["resume"]
    assert resume["needs"] == ["build", "release"]
    assert resume["if"] == "${{ needs.release.outputs.outcome == 'paused' }}"
    assert resume["environment"]["name"] == (
        "${{ inputs.approval-environment || format('{0}-canary', inputs.environment) }}"
    )
    assert resume["env"]["RG_RESUME"] == "true"
    assert resume["concurrency"] == jobs["release"]["concurrency"]


FAKE_RELEASEGATE = """#!/bin/sh
# Records its arguments; a release pauses (exit 5), a resume promotes.
echo "$*" >>"$CALLS"
case "$*" in
  "release --resume") echo "outcome=succeeded" >>"$GITHUB_OUTPUT"; exit 0 ;;
  release*) echo "outcome=paused" >>"$GITHUB_OUTPUT"; exit 5 ;;
esac
"""


@pytest.mark.parametrize(
    ("target", "resume", "calls"),
    [
        ("remote", "false", ["release --image img@sha256:1"]),
        ("ephemeral", "false", ["release --image img@sha256:1", "release --resume"]),
        ("remote", "true", ["release --resume"]),
    ],
)
def test_the_release_step_at_a_canary_pause(
    tmp_path: Path, target: str, resume: str, calls: list[str]
) -> None:
    """A pause is the release step's success on a remote target (the resume job waits for
    the approval); an ephemeral target, gone with its job, resumes at once."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "releasegate"
    fake.write_text(FAKE_RELEASEGATE)
    fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "RG_BUILT_IMAGE": "img@sha256:1",
        "RG_TARGET": target,
        "RG_RESUME": resume,
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ci" / "release.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "calls").read_text().splitlines() == calls


def test_production_waits_and_never_cancels() -> None:
    data = _load("production.yml")
    assert set(data["on"]["workflow_dispatch"]["inputs"]) == {"version", "dry-run"}
    assert data["concurrency"]["cancel-in-progress"] is False
    release = data["jobs"]["release"]
    assert release["uses"] == "./.github/workflows/release.yml"
    assert release["with"]["environment"] == "production"


def test_staging_runs_on_push_to_main() -> None:
    data = _load("staging.yml")
    assert data["on"]["push"]["branches"] == ["main"]
    assert data["jobs"]["release"]["with"]["environment"] == "staging"


# --- the preflight: bad input fails before anything is built or deployed -----------------


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path)], check=True)
    (tmp_path / "releasegate.toml").write_text(
        '[service]\nname = "notes"\n[postgres]\nurl_env = "DB_URL"\n'
        '[redis]\nurl_env = "R_URL"\n[qdrant]\nurl_env = "Q_URL"\n'
    )
    subprocess.run([*git, "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "one"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "tag", "v1.0.0"], check=True)
    return tmp_path


def _preflight(repo: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RG_", "GITHUB_"))}
    for name in (
        "DOCKER_HOST",
        "DOCKER_KNOWN_HOSTS",
        "DATABASE_URL",
        "REDIS_URL",
        "QDRANT_URL",
        "ACT",
    ):
        env.pop(name, None)
    env.update(
        {
            "RG_IMAGE": "ghcr.io/acme/notes",
            "RG_VERSION": "v1.0.0",
            "RG_ENVIRONMENT": "staging",
            "RG_CONFIG": "releasegate.toml",
            "RG_TARGET": "ephemeral",
        }
    )
    env.update(overrides)
    return subprocess.run(
        ["bash", str(PREFLIGHT), str(repo)], capture_output=True, text=True, env=env
    )


def test_preflight_accepts_good_input(repo: Path) -> None:
    proc = _preflight(repo)
    assert proc.returncode == 0, proc.stderr
    assert "preflight ok" in proc.stdout


def test_preflight_accepts_a_remote_target_with_its_secrets(repo: Path) -> None:
    proc = _preflight(
        repo,
        RG_TARGET="remote",
        DOCKER_HOST="ssh://deploy@prod.example.invalid",
        DOCKER_KNOWN_HOSTS="prod.example.invalid ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned",
        DATABASE_URL="postgresql://u:very-secret@db/x",
        REDIS_URL="redis://r/0",
        QDRANT_URL="http://q:6333",
    )
    assert proc.returncode == 0, proc.stderr
    assert "very-secret" not in proc.stdout + proc.stderr


def test_preflight_rejects_a_version_that_does_not_exist(repo: Path) -> None:
    proc = _preflight(repo, RG_VERSION="v9.9.9")
    assert proc.returncode == 2
    assert "error: version 'v9.9.9' does not exist" in proc.stderr
    assert "nothing was built or deployed" in proc.stderr


def test_preflight_rejects_a_wrong_config_path(repo: Path) -> None:
    proc = _preflight(repo, RG_CONFIG="deploy/releasegate.toml")
    assert proc.returncode == 2
    assert "error: config file 'deploy/releasegate.toml' not found" in proc.stderr


def test_preflight_rejects_a_config_outside_the_repository(repo: Path) -> None:
    proc = _preflight(repo, RG_CONFIG="../releasegate.toml")
    assert proc.returncode == 2
    assert "must be a path inside the repository" in proc.stderr


def test_preflight_names_every_missing_secret_of_a_remote_target(repo: Path) -> None:
    proc = _preflight(repo, RG_TARGET="remote", REDIS_URL="redis://r/0")
    assert proc.returncode == 2
    assert "error: target remote needs the secrets DOCKER_HOST DATABASE_URL QDRANT_URL" in (
        proc.stderr
    )
    # Embedded Qdrant needs no Qdrant URL.
    proc = _preflight(repo, RG_TARGET="remote", RG_QDRANT="embedded", REDIS_URL="redis://r/0")
    assert "needs the secrets DOCKER_HOST DATABASE_URL:" in proc.stderr


def test_preflight_reports_every_bad_input_at_once(repo: Path) -> None:
    proc = _preflight(repo, RG_TARGET="cloud", RG_GATE_PROFILE="forever", RG_IMAGE="Notes:latest")
    assert proc.returncode == 2
    assert "input target 'cloud' is unknown" in proc.stderr
    assert "input gate-profile 'forever' is unknown" in proc.stderr
    assert "input image 'Notes:latest' is not an image name" in proc.stderr


def test_preflight_writes_annotations_under_actions(repo: Path) -> None:
    proc = _preflight(repo, RG_VERSION="nope", ACT="true")
    assert proc.returncode == 2
    assert proc.stdout.startswith("::error title=releasegate preflight::version 'nope'")


# Inputs that try to end the annotation's line and start a workflow command of their own.
HOSTILE_INPUTS = {
    "RG_VERSION": "v1\n::set-output name=x::y",
    "RG_IMAGE": "::add-mask::",
    "RG_ENVIRONMENT": "prod\r::stop-commands::token",
    "RG_GATE_PROFILE": "quick%0A::warning::w",
    "RG_TARGET": "remote\n::error::fake",
    "RG_CONFIG": "releasegate.toml\r\n::notice::n",
}
ANNOTATION = "::error title=releasegate preflight::"


# (ids without "act", which `-k 'not act'` leaves out with the slow rehearsal)
@pytest.mark.parametrize("runner", ["ACT", "GITHUB_ACTIONS"], ids=["local", "hosted"])
def test_preflight_escapes_hostile_inputs_in_annotations(repo: Path, runner: str) -> None:
    proc = _preflight(repo, **HOSTILE_INPUTS, **{runner: "true"})
    assert proc.returncode == 2
    # The runner reads commands from both streams: the only lines that start with `::` are
    # the annotations, one per problem, as there is one `error:` line per problem.
    commands = [line for line in proc.stdout.splitlines() if line.startswith("::")]
    assert all(line.startswith(ANNOTATION) for line in commands), proc.stdout
    assert not [line for line in proc.stderr.splitlines() if line.startswith("::")], proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(commands) == len(HOSTILE_INPUTS), proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == len(errors) + 1  # + "preflight failed: ..."
    # Each input is shown, escaped: %0A/%0D in an annotation, \n/\r on the error line.
    assert f"{ANNOTATION}input version 'v1%0A::set-output name=x::y' is not" in proc.stdout
    assert "error: input version 'v1\\n::set-output name=x::y' is not" in proc.stderr
    assert "input gate-profile 'quick%250A::warning::w' is unknown" in proc.stdout
    assert "input config 'releasegate.toml%0D%0A::notice::n'" not in proc.stdout
    assert "config file 'releasegate.toml%0D%0A::notice::n' not found" in proc.stdout


def test_workflow_command_shell_function_escapes_properties_and_message() -> None:
    lib = ROOT / "scripts" / "lib" / "workflow-commands.sh"
    script = f'source "{lib}"; workflow_command warning "$1" "title=$2" file=a.sh'
    proc = subprocess.run(
        ["bash", "-c", script, "-", "50%\r\n::x", "a:b,c%"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "::warning title=a%3Ab%2Cc%25,file=a.sh::50%25%0D%0A::x\n"
    bad = subprocess.run(
        ["bash", "-c", f'source "{lib}"; workflow_command "add mask" x'],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stdout == ""


# --- connect.sh: the remote target's secrets reach the job safely ------------------------

CONNECT = ROOT / "scripts" / "ci" / "connect.sh"


def _connect(
    repo: Path, tmp_path: Path, *args: str, **secrets: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RG_", "GITHUB_", "DOCKER"))}
    env.update(
        HOME=str(tmp_path / "home"),
        RUNNER_TEMP=str(tmp_path / "runner-temp"),
        GITHUB_ENV=str(tmp_path / "github-env"),
        RG_TARGET="remote",
        RG_CONFIG="releasegate.toml",
        **secrets,
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", str(CONNECT), *args], capture_output=True, text=True, env=env, cwd=repo
    )


def _github_env(path: Path) -> dict[str, str]:
    """GITHUB_ENV as the runner reads it: NAME=VALUE lines and NAME<<DELIM blocks."""
    values: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and "=" not in line.split("<<")[0]:
            name, delim = line.split("<<", 1)
            body = []
            for inner in lines:
                if inner == delim:
                    break
                body.append(inner)
            values[name] = "\n".join(body)
        else:
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_connect_pins_the_host_key_and_no_value_can_add_variables(
    repo: Path, tmp_path: Path
) -> None:
    known = "prod.example.invalid ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned"
    hostile = "postgresql://u:p@db/x\nLD_PRELOAD=/tmp/evil.so"
    proc = _connect(
        repo,
        tmp_path,
        DOCKER_HOST="ssh://deploy@prod.example.invalid",
        DOCKER_KNOWN_HOSTS=known,
        DOCKER_SSH_KEY="-----BEGIN KEY-----\nkey\n-----END KEY-----",
        DATABASE_URL=hostile,
    )
    assert proc.returncode == 0, proc.stderr
    values = _github_env(tmp_path / "github-env")
    assert "LD_PRELOAD" not in values  # the newline stayed inside DB_URL's value
    assert values["DB_URL"] == hostile
    ssh_dir = tmp_path / "runner-temp" / ".releasegate-ssh"
    assert values["RELEASEGATE_SSH_KNOWN_HOSTS"] == str(ssh_dir / "known_hosts")
    assert (ssh_dir / "known_hosts").read_text() == known + "\n"
    assert (ssh_dir / "id").stat().st_mode & 0o777 == 0o600
    config = (tmp_path / "home" / ".ssh" / "config").read_text()
    assert "StrictHostKeyChecking yes" in config and f"UserKnownHostsFile {ssh_dir}" in config
    assert "ssh-keyscan" not in CONNECT.read_text().split("set -euo pipefail", 1)[1]
    cleanup = _connect(repo, tmp_path, "--cleanup")
    assert cleanup.returncode == 0 and not ssh_dir.exists()


def test_connect_refuses_an_ssh_host_without_a_pinned_key(repo: Path, tmp_path: Path) -> None:
    proc = _connect(repo, tmp_path, DOCKER_HOST="ssh://deploy@prod.example.invalid")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: DOCKER_HOST is ssh:// but the secret DOCKER_KNOWN_HOSTS")
    preflight = _preflight(
        repo,
        RG_TARGET="remote",
        RG_QDRANT="embedded",
        DOCKER_HOST="ssh://deploy@prod.example.invalid",
        DATABASE_URL="postgresql://u:p@db/x",
        REDIS_URL="redis://r/0",
    )
    assert preflight.returncode == 2
    assert "needs the secrets DOCKER_KNOWN_HOSTS:" in preflight.stderr


# --- rollback.yml's preflight, promoted-in and baseline ---------------------------------


def test_preflight_of_a_rollback_needs_a_release_id_and_a_persistent_target(repo: Path) -> None:
    ok = _preflight(
        repo,
        RG_ACTION="rollback",
        RG_RELEASE="12",
        RG_TARGET="remote",
        RG_QDRANT="embedded",
        RG_IMAGE="",
        RG_VERSION="",
        DOCKER_HOST="ssh://deploy@prod.example.invalid",
        DOCKER_KNOWN_HOSTS="prod.example.invalid ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned",
        DATABASE_URL="postgresql://u:p@db/x",
        REDIS_URL="redis://r/0",
    )
    assert ok.returncode == 0, ok.stderr
    assert "roll back release 12 of staging" in ok.stdout
    bad = _preflight(repo, RG_ACTION="rollback", RG_RELEASE="12; rm -rf /", RG_IMAGE="")
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: input release '12; rm -rf /' is not a release id: give the number"
        " releasegate history shows",
        "error: input target 'ephemeral': only a remote target outlives its release job;"
        " an ephemeral one has nothing to roll back",
    ]


def test_preflight_checks_promoted_in_and_baseline(repo: Path) -> None:
    assert _preflight(repo, RG_PROMOTED_IN="staging", RG_ENVIRONMENT="production").returncode == 0
    same = _preflight(repo, RG_PROMOTED_IN="staging")
    assert same.returncode == 2 and "names the environment being released" in same.stderr
    assert _preflight(repo, RG_BASELINE="ghcr.io/acme/notes@sha256:" + "a" * 64).returncode == 0
    bad = _preflight(repo, RG_BASELINE="yesterday's")
    assert bad.returncode == 2
    assert "input baseline 'yesterday's' is neither previous, none nor an image" in bad.stderr


# --- the promoted digest, from a real registry -------------------------------------------

IMAGE_SH = ROOT / "scripts" / "ci" / "image.sh"
REGISTRY = "127.0.0.1:" + os.environ.get("RELEASEGATE_ACT_REGISTRY_PORT", "35000")


def _registry_up() -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_a_version_staging_never_promoted_has_no_digest(repo: Path) -> None:
    if not _registry_up():
        pytest.skip(f"no registry on {REGISTRY} (scripts/test.sh starts one)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RG_", "GITHUB_"))}
    env.update(
        RG_IMAGE=f"{REGISTRY}/never-promoted-{os.getpid()}",
        RG_VERSION="v1.0.0",
        RG_PROMOTED_IN="staging",
        GITHUB_OUTPUT=str(repo / "outputs"),
    )
    proc = subprocess.run(
        ["bash", str(IMAGE_SH)], capture_output=True, text=True, env=env, cwd=repo
    )
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "v1.0.0"], capture_output=True, text=True
    ).stdout.strip()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: no promoted digest for v1.0.0: staging never promoted commit {commit}"
        f" of {REGISTRY}/never-promoted-{os.getpid()}"
    ]
    assert not (repo / "outputs").exists()  # nothing for a release job to release
    # No earlier promotion either: the ephemeral baseline is none (a first release).
    previous = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ci" / "promotion.sh"), "previous"],
        capture_output=True,
        text=True,
        env={**env, "RG_ENVIRONMENT": "staging"},
    )
    assert (previous.returncode, previous.stdout, previous.stderr) == (0, "", "")


def test_an_unreachable_registry_is_one_clear_line_not_a_missing_promotion(repo: Path) -> None:
    # Port 1 of the loopback: nothing listens, the connection is refused at once.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RG_", "GITHUB_"))}
    env.update(RG_IMAGE="127.0.0.1:1/notes", RG_VERSION="v1.0.0", RG_PROMOTED_IN="staging")
    proc = subprocess.run(
        ["bash", str(IMAGE_SH)], capture_output=True, text=True, env=env, cwd=repo
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: cannot read 127.0.0.1:1/notes:staging-promoted-"), line
    # The baseline lookup: no earlier promotion is "none", an unreachable registry is not.
    previous = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ci" / "promotion.sh"), "previous"],
        capture_output=True,
        text=True,
        env={**env, "RG_ENVIRONMENT": "staging"},
    )
    assert previous.returncode == 3 and previous.stdout == "", previous.stderr
    assert previous.stderr.startswith("error: cannot read 127.0.0.1:1/notes:staging-promoted")
