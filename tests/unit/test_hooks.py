"""[hooks]: validation, and run_hook with real commands (the Python interpreter running
the tests, and small scripts it writes): environment, output tails, redaction, exit
codes, timeouts and a program that does not exist."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from releasegate.config import Settings, load_config
from releasegate.errors import ConfigError
from releasegate.hooks import TAIL_CHARS, HookResult, run_hook

PASSWORD = "Hk9-hook-secret"
DB_URL = f"postgresql://svc:{PASSWORD}@127.0.0.1:5432/notes"
PY = sys.executable

BASE = """\
[service]
name = "notes"

[postgres]
url_env = "NOTES_DATABASE_URL"
"""


def settings(tmp_path: Path, hooks: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "releasegate.toml"
    path.write_text(BASE + "\n[hooks]\n" + hooks)
    return load_config(path, {"NOTES_DATABASE_URL": DB_URL, **(env or {})})


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def toml_list(*parts: str | Path) -> str:
    return "[" + ", ".join(f'"{part}"' for part in parts) + "]"


def ran(result: HookResult | None) -> HookResult:
    assert result is not None
    return result


# -- validation -------------------------------------------------------------------------


def test_no_hooks_by_default(tmp_path: Path) -> None:
    path = tmp_path / "releasegate.toml"
    path.write_text(BASE)
    loaded = load_config(path, {})
    assert loaded.raw.hooks.after_gate is None and loaded.raw.hooks.timeout == 120.0
    assert run_hook(loaded, "after_gate", release_id=1, color="green") is None
    assert run_hook(loaded, "after_watch", release_id=1, color=None) is None


def test_a_string_is_split_without_a_shell(tmp_path: Path) -> None:
    hooks = settings(tmp_path, 'after_gate = "tool --flag \'two words\' $HOME"\ntimeout = "5s"\n')
    assert hooks.raw.hooks.after_gate == ["tool", "--flag", "two words", "$HOME"]
    assert hooks.raw.hooks.timeout == 5.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("after_gate = []\n", "hooks.after_gate: the command is empty"),
        ('after_gate = ""\n', "hooks.after_gate: the command is empty"),
        ("after_gate = [1, 2]\n", "hooks.after_gate: expected a command"),
        ("after_gate = 5\n", "hooks.after_gate: expected a command"),
        ('after_gate = "a \'unclosed"\n', "hooks.after_gate: cannot split the command"),
        ('timeout = "0s"\n', "hooks.timeout"),
        ('before_gate = ["x"]\n', "unknown key 'hooks.before_gate'"),
    ],
)
def test_bad_hooks_are_config_errors_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, text)
    assert message in str(info.value)


def test_an_unknown_hook_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown hook 'before_gate'"):
        run_hook(settings(tmp_path, ""), "before_gate", release_id=1, color=None)


# -- running ----------------------------------------------------------------------------

ENV_DUMP = """\
import os, sys
for name in ("RELEASEGATE_RELEASE_ID", "RELEASEGATE_SYNTHETIC_MARKER", "RELEASEGATE_COLOR",
             "FROM_PARENT"):
    print(f"{name}={os.environ.get(name, '<unset>')}")
print("cwd=" + os.getcwd())
print("args=" + ",".join(sys.argv[1:]))
"""


def test_hook_gets_release_marker_color_and_the_process_env(tmp_path: Path) -> None:
    dump = script(tmp_path, "dump.py", ENV_DUMP)
    hooks = settings(
        tmp_path, f"after_gate = {toml_list(PY, dump, 'a b', '$X')}\n", {"FROM_PARENT": "yes"}
    )
    result = ran(run_hook(hooks, "after_gate", release_id=42, color="green"))
    assert result.ok and result.exit_code == 0 and result.error is None
    assert result.stdout_tail.splitlines() == [
        "RELEASEGATE_RELEASE_ID=42",
        "RELEASEGATE_SYNTHETIC_MARKER=42",
        "RELEASEGATE_COLOR=green",
        "FROM_PARENT=yes",
        f"cwd={tmp_path}",
        "args=a b,$X",  # no shell: no word splitting, no expansion
    ]
    manual = ran(run_hook(hooks, "after_gate", release_id="manual", color=None))
    assert "RELEASEGATE_SYNTHETIC_MARKER=manual" in manual.stdout_tail
    assert "RELEASEGATE_COLOR=\n" in manual.stdout_tail
    data = result.to_dict()
    assert data["name"] == "after_gate" and data["exit_code"] == 0 and data["ok"] is True
    assert data["argv"][1] == str(dump) and data["duration_s"] >= 0


def test_a_relative_program_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    tool = script(
        tmp_path / "bin", "t", f"#!{PY}\nimport sys\nprint('relative ok', sys.argv[1:])\n"
    )
    tool.chmod(0o755)
    hooks = settings(tmp_path, 'after_watch = "bin/t one"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        result = ran(run_hook(hooks, "after_watch", release_id=3, color="blue"))
    finally:
        os.chdir(cwd)
    assert result.ok, result.to_dict()
    assert result.stdout_tail.strip() == "relative ok ['one']"


def test_python_placeholder_is_releasegate_s_own_interpreter(tmp_path: Path) -> None:
    script(tmp_path, "which.py", "import sys\nprint(sys.executable)\n")
    hooks = settings(tmp_path, 'after_gate = ["{python}", "which.py"]\n')
    result = ran(run_hook(hooks, "after_gate", release_id=1, color="green"))
    assert result.ok, result.to_dict()
    assert result.stdout_tail.strip() == sys.executable


def test_failure_output_is_kept_as_tails_and_redacted(tmp_path: Path) -> None:
    noisy = script(
        tmp_path,
        "noisy.py",
        "import os, sys\n"
        "print('x' * 20000)\n"
        "print('tail of stdout')\n"
        "print('connecting to ' + os.environ['NOTES_DATABASE_URL'], file=sys.stderr)\n"
        "print('password was ' + os.environ['NOTES_DATABASE_URL'].split(':')[2].split('@')[0],"
        " file=sys.stderr)\n"
        "sys.exit(3)\n",
    )
    result = ran(
        run_hook(
            settings(tmp_path, f"after_gate = {toml_list(PY, noisy)}\n"),
            "after_gate",
            release_id=5,
            color="green",
        )
    )
    assert not result.ok and result.exit_code == 3 and not result.timed_out
    assert len(result.stdout_tail) <= TAIL_CHARS
    assert result.stdout_tail.endswith("tail of stdout\n")
    assert PASSWORD not in result.stderr_tail and PASSWORD not in str(result.to_dict())
    assert "postgresql://svc:***@127.0.0.1:5432/notes" in result.stderr_tail
    assert "password was ***" in result.stderr_tail
    assert "exit 3" in result.summary() and "FAILED" in result.summary()
    assert result.output_tail.endswith(result.stderr_tail)


def test_a_hook_past_its_timeout_is_stopped_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    slow = script(
        tmp_path,
        "slow.py",
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n",
    )
    hooks = settings(tmp_path, f'after_gate = {toml_list(PY, slow)}\ntimeout = "1s"\n')
    started = time.monotonic()
    result = ran(run_hook(hooks, "after_gate", release_id=1, color="green"))
    assert time.monotonic() - started < 10
    assert result.timed_out and not result.ok
    assert result.error == "stopped after the timeout of 1s"
    assert result.stdout_tail == "started\n"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent counts as exited)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_missing_program_is_a_failed_result_not_an_exception(tmp_path: Path) -> None:
    hooks = settings(tmp_path, 'after_watch = ["/nonexistent/cleanup", "--x"]\n')
    result = ran(run_hook(hooks, "after_watch", release_id=9, color=None))
    assert not result.ok and result.exit_code is None
    assert result.error is not None and "cannot run /nonexistent/cleanup" in result.error
    assert "No such file" in result.error
