"""Writing GitHub Actions' files and commands: step outputs, the job summary, masks.

GitHub hands a step two files through the environment: ``GITHUB_OUTPUT`` takes
``name=value`` lines (or, for multi-line values, the heredoc form
``name<<DELIMITER`` / value lines / ``DELIMITER``) and ``GITHUB_STEP_SUMMARY`` takes
Markdown, at most 1 MiB per step. Under act (``ACT=true``) there may be no summary file;
a fallback path then receives the summary instead.
"""

from __future__ import annotations

import os
import re
import secrets as _random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from releasegate.report.files import ReportPaths
from releasegate.report.render import SUMMARY_LIMIT_BYTES, render_markdown
from releasegate.secrets import redact, register_secret

OutputValue = str | int | float | bool | None

# What GitHub accepts as an output name (and what is usable in ${{ steps.x.outputs.name }}).
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# The one outcome after which the new image serves: the ledger's "succeeded".
PROMOTED_OUTCOME = "succeeded"
TRUNCATION_NOTE = (
    "\n\n... the summary was cut to fit GitHub's 1 MiB step-summary limit (see the JSON report)\n"
)


def _output_text(value: OutputValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_output(name: str, value: OutputValue) -> str:
    """One output as ``GITHUB_OUTPUT`` expects it, heredoc form for multi-line values."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid output name {name!r}: use letters, digits, '-' and '_',"
            " starting with a letter or '_'"
        )
    text = redact(_output_text(value))
    if "\n" not in text and "\r" not in text:
        return f"{name}={text}\n"
    delimiter = f"ghadelimiter_{_random.token_hex(16)}"
    while delimiter in text:  # pragma: no cover - 128 random bits
        delimiter = f"ghadelimiter_{_random.token_hex(16)}"
    return f"{name}<<{delimiter}\n{text}\n{delimiter}\n"


# What a workflow command's name and its property names may be.
_COMMAND_RE = re.compile(r"[a-z][a-z-]*")
_PROPERTY_RE = re.compile(r"[A-Za-z]+")


def _escape_command_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def workflow_command(
    command: str, message: str, properties: Mapping[str, str] | None = None
) -> str:
    """One workflow command line, ``::COMMAND NAME=VALUE,...::MESSAGE``, without its newline.

    Escaped as the runner unescapes it, so no message or property can end the line and start
    a command of its own: in the message ``%`` CR LF become ``%25`` ``%0D`` ``%0A``; in a
    property value also ``:`` and ``,`` (``%3A`` ``%2C``), which would end the value. A ``::``
    inside the message needs nothing: the runner ends the command at the first ``::`` after
    its name and properties. Raises ValueError for a malformed command or property name.
    """
    if not _COMMAND_RE.fullmatch(command):
        raise ValueError(f"invalid workflow command name {command!r}")
    pairs = []
    for name, value in (properties or {}).items():
        if not _PROPERTY_RE.fullmatch(name):
            raise ValueError(f"invalid workflow command property name {name!r}")
        escaped = _escape_command_data(value).replace(":", "%3A").replace(",", "%2C")
        pairs.append(f"{name}={escaped}")
    head = f"{command} {','.join(pairs)}" if pairs else command
    return f"::{head}::{_escape_command_data(message)}"


@dataclass(frozen=True)
class GithubEnv:
    """The GitHub Actions files of the running step; see :meth:`from_environ`."""

    output_path: Path | None
    summary_path: Path | None
    act: bool = False
    # Where workflow commands (::add-mask::) go; None: sys.stdout at the time of writing.
    stdout: TextIO | None = None
    summary_limit_bytes: int = SUMMARY_LIMIT_BYTES

    @classmethod
    def from_environ(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        summary_fallback_path: Path | None = None,
        stdout: TextIO | None = None,
    ) -> GithubEnv | None:
        """The step's files, or None outside GitHub Actions and act.

        ``summary_fallback_path`` receives the summary when ``GITHUB_STEP_SUMMARY`` is not
        set, as under act.
        """
        env = os.environ if env is None else env
        act = env.get("ACT", "").lower() == "true"
        if env.get("GITHUB_ACTIONS", "").lower() != "true" and not act:
            return None
        output = env.get("GITHUB_OUTPUT") or None
        summary = env.get("GITHUB_STEP_SUMMARY") or None
        return cls(
            output_path=Path(output) if output else None,
            summary_path=Path(summary) if summary else summary_fallback_path,
            act=act,
            stdout=stdout,
        )

    @property
    def is_act(self) -> bool:
        """Whether this runs under act rather than on GitHub."""
        return self.act

    def set_output(self, name: str, value: OutputValue) -> bool:
        """Append one step output; False when the step has no output file."""
        line = format_output(name, value)  # validates even when there is nowhere to write
        if self.output_path is None:
            return False
        with self.output_path.open("a", encoding="utf-8", newline="\n") as handle:
            handle.write(line)
        return True

    def set_outputs(self, outputs: Mapping[str, OutputValue]) -> bool:
        """Append several outputs in one write; every name is checked before any is written."""
        text = "".join(format_output(name, value) for name, value in outputs.items())
        if self.output_path is None:
            return False
        with self.output_path.open("a", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        return True

    def summary_room(self) -> int:
        """Bytes the step summary can still take (the limit is per step, appends add up)."""
        if self.summary_path is None:
            return 0
        try:
            used = self.summary_path.stat().st_size
        except FileNotFoundError:
            used = 0
        return max(0, self.summary_limit_bytes - used)

    def append_summary(self, markdown: str) -> bool:
        """Append Markdown to the step summary, cut with a note to stay within the limit.

        Returns False when there is no summary file or no room left at all.
        """
        if self.summary_path is None:
            return False
        room = self.summary_room()
        text = redact(markdown)
        if not text.endswith("\n"):
            text += "\n"
        data = text.encode()
        if len(data) > room:
            note = TRUNCATION_NOTE.encode()
            if room <= len(note):
                return False
            head = data[: room - len(note)].decode("utf-8", errors="ignore")
            # Cut at a line boundary so no Markdown line is left half-written.
            cut = head.rfind("\n")
            data = (head[:cut] if cut >= 0 else "").encode() + note
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        with self.summary_path.open("ab") as handle:
            handle.write(data)
        return True

    def mask(self, value: str) -> None:
        """Ask the runner to mask a secret in the log (and redact it here too)."""
        register_secret(value)
        stream = self.stdout or sys.stdout
        # The runner masks line by line; a multi-line secret needs one command per line.
        for line in value.splitlines():
            if line.strip():
                register_secret(line)
                stream.write(workflow_command("add-mask", line) + "\n")
        stream.flush()


def publish(result: Mapping[str, Any], paths: ReportPaths, env: GithubEnv | None) -> bool:
    """Set the release outputs and append the Markdown report to the step summary.

    Outputs: ``release-id``, ``outcome``, ``digest``, ``report-json``, ``report-markdown``.
    ``digest`` is the promoted image: empty unless the release succeeded (a dry run, a
    blocked or rolled-back release promoted nothing). Returns False (and does nothing)
    outside GitHub Actions.
    """
    if env is None:
        return False
    image = result.get("image")
    digest = None
    if result.get("outcome") == PROMOTED_OUTCOME and isinstance(image, Mapping):
        digest = image.get("digest")
    env.set_outputs(
        {
            "release-id": result.get("release_id"),
            "outcome": result.get("outcome"),
            "digest": digest,
            "report-json": str(paths.json),
            "report-markdown": str(paths.markdown),
        }
    )
    room = env.summary_room()
    if room > 0:
        env.append_summary(render_markdown(result, limit_bytes=room))
    return True
