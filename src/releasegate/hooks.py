"""Hooks: commands of the service's own, run on this machine after a gate.

The ``[hooks]`` table of the config names them::

    [hooks]
    after_gate = ["{python}", "scripts/cleanup_synthetic.py"]
    after_watch = "scripts/notify.sh --quiet"     # one string: split like a shell, no shell
    timeout = "2m"

- A command is a list of arguments, or one string split by :func:`shlex.split`. Neither
  form goes through a shell (no pipes, globs or ``$VAR`` expansion). A first argument
  with a ``/`` that is not absolute is relative to the config file's folder, which is
  also the working directory. A first argument ``{python}`` is the interpreter releasegate
  runs on, so a hook may use releasegate's own dependencies wherever it is installed
  (a CI job installs it in a virtualenv of its own).
- The command gets the process environment plus ``RELEASEGATE_RELEASE_ID``,
  ``RELEASEGATE_SYNTHETIC_MARKER`` (the ``X-Releasegate-Synthetic`` value the gate's
  requests carried) and ``RELEASEGATE_COLOR`` (the color the gate ran against; empty
  when there is none).
- It runs at most ``hooks.timeout``; then its process group is stopped (SIGTERM, then
  SIGKILL).
- Its output is kept (the last :data:`TAIL_CHARS` characters of stdout and of stderr),
  with every known secret and URL password redacted.

:func:`run_hook` never raises for what the command does (a missing program, a non-zero
exit, a timeout): it returns a :class:`HookResult` whose ``ok`` is False, and the caller
decides what a failed hook means.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any

from releasegate.config import Settings
from releasegate.errors import ConfigError
from releasegate.gates import synthetic
from releasegate.secrets import redact, register_secret, register_url

HOOK_NAMES = ("after_gate", "after_watch")
TAIL_CHARS = 4000
TERM_GRACE_S = 5.0


@dataclass
class HookResult:
    """What one hook run did."""

    name: str
    argv: list[str]
    ok: bool
    exit_code: int | None
    duration_s: float
    timed_out: bool = False
    stdout_tail: str = ""
    stderr_tail: str = ""
    error: str | None = None  # why it could not run or was stopped

    @property
    def output_tail(self) -> str:
        """stdout then stderr tails, for a report."""
        return "\n".join(part for part in (self.stdout_tail, self.stderr_tail) if part)

    def summary(self) -> str:
        """One line: the hook, its outcome and duration."""
        outcome = self.error or f"exit {self.exit_code}"
        verdict = "ok" if self.ok else "FAILED"
        return f"hook {self.name}: {verdict} ({outcome}, {self.duration_s:.1f}s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": self.argv,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "timed_out": self.timed_out,
            "error": self.error,
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
        }


def hook_env(settings: Settings, *, release_id: int | str, color: str | None) -> dict[str, str]:
    """The process environment of a hook (also registers the stores' secrets)."""
    _register_store_secrets(settings)
    return {
        **settings.env,
        "RELEASEGATE_RELEASE_ID": str(release_id),
        "RELEASEGATE_SYNTHETIC_MARKER": synthetic.marker_for(release_id),
        "RELEASEGATE_COLOR": color or "",
    }


def _register_store_secrets(settings: Settings) -> None:
    # The hook sees every variable; whatever it prints of a store URL must not survive.
    raw = settings.raw
    for section in (raw.postgres, raw.redis, raw.qdrant):
        if section is not None and (url := settings.env.get(section.url_env)):
            register_url(url)
    if raw.qdrant is not None:
        register_secret(settings.env.get(raw.qdrant.api_key_env))


PYTHON_PLACEHOLDER = "{python}"


def _argv(settings: Settings, command: list[str]) -> list[str]:
    program = command[0]
    if program == PYTHON_PLACEHOLDER:
        program = sys.executable
    elif "/" in program and not os.path.isabs(program):
        program = str(settings.root / program)
    return [program, *command[1:]]


def _tail(handle: IO[bytes]) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    # Bytes, then characters: up to 4 bytes a character in UTF-8.
    handle.seek(max(0, size - TAIL_CHARS * 4))
    text = handle.read().decode("utf-8", errors="replace")[-TAIL_CHARS:]
    return redact(text)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the hook's process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_hook(
    settings: Settings, name: str, *, release_id: int | str, color: str | None
) -> HookResult | None:
    """Run the hook ``name`` (``after_gate``, ``after_watch``); None when not configured.

    ``release_id`` is the ledger's release id, or ``"manual"`` outside a release; it
    gives ``RELEASEGATE_RELEASE_ID`` and the marker. An unknown hook name is a
    :class:`ConfigError`; anything the command does is in the result.
    """
    if name not in HOOK_NAMES:
        raise ConfigError(f"unknown hook {name!r} (expected one of {', '.join(HOOK_NAMES)})")
    command: list[str] | None = getattr(settings.raw.hooks, name)
    if command is None:
        return None
    env = hook_env(settings, release_id=release_id, color=color)
    argv = _argv(settings, command)
    shown = [redact(part) for part in argv]
    timeout = settings.raw.hooks.timeout
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=settings.root,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return HookResult(
                name=name,
                argv=shown,
                ok=False,
                exit_code=None,
                duration_s=time.monotonic() - started,
                error=redact(f"cannot run {argv[0]}: {exc.strerror or exc}"),
            )
        timed_out = False
        try:
            exit_code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
            exit_code = proc.returncode
        except BaseException:
            _stop(proc)  # interrupted: the hook must not outlive its caller
            raise
        duration = time.monotonic() - started
        return HookResult(
            name=name,
            argv=shown,
            ok=exit_code == 0 and not timed_out,
            exit_code=exit_code,
            duration_s=duration,
            timed_out=timed_out,
            stdout_tail=_tail(out),
            stderr_tail=_tail(err),
            error=f"stopped after the timeout of {timeout:g}s" if timed_out else None,
        )
