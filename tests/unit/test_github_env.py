"""GitHub Actions files: step outputs (with the heredoc form), the step summary, masks."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate import secrets
from releasegate.report.files import write_reports
from releasegate.report.github import (
    TRUNCATION_NOTE,
    GithubEnv,
    format_output,
    publish,
    workflow_command,
)
from releasegate.secrets import redact, register_secret

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    registry: set[str] = set()
    monkeypatch.setattr(secrets, "_registered", registry)
    yield registry


def parse_outputs(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT as the runner reads it: ``name=value`` or ``name<<DELIM`` ... ``DELIM``."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        heredoc = line.find("<<")
        equals = line.find("=")
        if heredoc >= 0 and (equals < 0 or heredoc < equals):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            body = []
            while lines[i] != delimiter:  # an IndexError here: an unterminated heredoc
                body.append(lines[i])
                i += 1
            i += 1
            outputs[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            outputs[name] = value
    return outputs


@pytest.fixture
def gh(tmp_path: Path) -> GithubEnv:
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
    }
    found = GithubEnv.from_environ(env, stdout=io.StringIO())
    assert found is not None
    return found


def test_from_environ(tmp_path: Path) -> None:
    assert GithubEnv.from_environ({}) is None
    assert GithubEnv.from_environ({"GITHUB_OUTPUT": str(tmp_path / "o")}) is None
    gh = GithubEnv.from_environ(
        {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "o")},
        summary_fallback_path=tmp_path / "fallback.md",
    )
    assert gh is not None and not gh.is_act
    assert gh.output_path == tmp_path / "o"
    assert gh.summary_path == tmp_path / "fallback.md"


def test_outputs_single_and_multi_line_parse_back(gh: GithubEnv) -> None:
    assert gh.output_path is not None
    gh.output_path.write_text("earlier=kept\n", encoding="utf-8")
    values = {
        "release-id": "12",
        "empty": "",
        "with_equals": "a=b<<c",
        "lines": "first\nsecond\n\nfourth",
        "tricky": "EOF\nghadelimiter_\n<<\nname=value\n",
    }
    for name, value in values.items():
        assert gh.set_output(name, value)
    text = gh.output_path.read_text(encoding="utf-8")
    assert text.startswith("earlier=kept\nrelease-id=12\nempty=\nwith_equals=a=b<<c\nlines<<")
    assert parse_outputs(text) == {"earlier": "kept", **values}


def test_heredoc_delimiters_are_random_and_absent_from_the_value() -> None:
    value = "one\ntwo"
    first, second = format_output("x", value), format_output("x", value)
    delimiters = {text.split("\n")[0].split("<<")[1] for text in (first, second)}
    assert len(delimiters) == 2
    for text in (first, second):
        delimiter = text.split("\n")[0].split("<<")[1]
        assert delimiter not in value and len(delimiter) >= 32
        assert text == f"x<<{delimiter}\none\ntwo\n{delimiter}\n"


def test_output_values_of_other_types_and_secrets(gh: GithubEnv) -> None:
    register_secret("hunter22")
    gh.set_outputs({"ok": True, "no": False, "none": None, "n": 3, "url": "x hunter22 y"})
    assert gh.output_path is not None
    assert parse_outputs(gh.output_path.read_text(encoding="utf-8")) == {
        "ok": "true",
        "no": "false",
        "none": "",
        "n": "3",
        "url": "x *** y",
    }


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a=b", "a<<b", "é", "a\nb", "-x", "a\n"])
def test_output_names_are_validated(gh: GithubEnv, name: str) -> None:
    with pytest.raises(ValueError, match="invalid output name"):
        gh.set_output(name, "v")
    # One bad name in a batch writes nothing at all.
    with pytest.raises(ValueError):
        gh.set_outputs({"good": "1", name: "2"})
    assert gh.output_path is not None and not gh.output_path.exists()
    for good in ("a", "_a", "release-id", "A_1-b"):
        assert format_output(good, "v") == f"{good}=v\n"


def test_summary_appends_and_respects_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "summary.md"
    gh = GithubEnv(output_path=None, summary_path=path, summary_limit_bytes=2000)
    assert gh.summary_room() == 2000
    assert gh.append_summary("# first")
    assert gh.append_summary("second\n")
    assert path.read_text(encoding="utf-8") == "# first\nsecond\n"
    assert gh.summary_room() == 2000 - len("# first\nsecond\n")
    big = "".join(f"line {i} é\n" for i in range(1000))
    assert gh.append_summary(big)
    data = path.read_bytes()
    assert len(data) <= 2000
    assert data.endswith(TRUNCATION_NOTE.encode())
    text = data.decode()  # never cut inside a UTF-8 character
    body = text[len("# first\nsecond\n") : -len(TRUNCATION_NOTE)]
    assert body.startswith("line 0 é\n") and body.split("\n")[-1].startswith("line ")
    assert all(line.startswith("line ") and line.endswith(" é") for line in body.split("\n"))
    # Full: nothing more is written.
    assert not gh.append_summary("more")
    assert path.read_bytes() == data


def test_act_writes_the_summary_to_the_fallback_path(tmp_path: Path) -> None:
    env = {"ACT": "true", "GITHUB_OUTPUT": str(tmp_path / "out")}
    fallback = tmp_path / "act" / "summary.md"
    gh = GithubEnv.from_environ(env, summary_fallback_path=fallback)
    assert gh is not None and gh.is_act
    assert gh.append_summary("## hello")
    assert fallback.read_text(encoding="utf-8") == "## hello\n"
    bare = GithubEnv.from_environ({"ACT": "true"})
    assert bare is not None and bare.is_act
    assert not bare.append_summary("## lost") and not bare.set_output("a", "b")
    with pytest.raises(ValueError):
        bare.set_output("bad name", "b")


def test_mask(gh: GithubEnv) -> None:
    gh.mask("s3cr3t-value\n100%-line\r\n")
    assert isinstance(gh.stdout, io.StringIO)
    assert gh.stdout.getvalue() == "::add-mask::s3cr3t-value\n::add-mask::100%25-line\n"
    assert redact("token s3cr3t-value here") == "token *** here"


# Inputs that try to end a workflow command's line and start one of their own.
HOSTILE = [
    "v1\n::set-output name=x::y",
    "::add-mask::",
    "a\r::stop-commands::token",
    "100%0A::warning::x",
    "x\r\n::error file=a,line=1::boom",
    "t:1,title=other",
]
_ESCAPES = {"%25": "%", "%0D": "\r", "%0A": "\n", "%3A": ":", "%2C": ","}


def parse_command(line: str) -> tuple[str, dict[str, str], str]:
    """A workflow command as the runner reads it: the command and its properties end at the
    first ``::`` after the leading one, properties split on ``,`` and ``=``, then unescaped."""
    assert line.startswith("::")
    end = line.index("::", 2)
    name, _, props = line[2:end].partition(" ")

    def unescape(text: str) -> str:
        return re.sub(r"%(25|0D|0A|3A|2C)", lambda m: _ESCAPES[m.group(0)], text)

    properties = dict(pair.split("=", 1) for pair in props.split(",") if pair)
    return name, {k: unescape(v) for k, v in properties.items()}, unescape(line[end + 2 :])


@pytest.mark.parametrize("text", HOSTILE)
def test_workflow_command_keeps_hostile_input_inside_one_command(text: str) -> None:
    line = workflow_command("error", text, {"title": text, "file": "a.py"})
    assert line.splitlines() == [line]
    assert line.startswith("::error title=")
    assert parse_command(line) == ("error", {"title": text, "file": "a.py"}, text)
    assert parse_command(workflow_command("notice", text)) == ("notice", {}, text)


def test_workflow_command_escapes_as_github_documents() -> None:
    line = workflow_command("warning", "50%\r\n::x", {"title": "a:b,c%"})
    assert line == "::warning title=a%3Ab%2Cc%25::50%25%0D%0A::x"


@pytest.mark.parametrize(
    ("command", "properties"),
    [("", {}), ("add mask", {}), ("error\n", {}), ("error", {"ti tle": "x"}), ("error", {"": "x"})],
)
def test_workflow_command_rejects_malformed_names(command: str, properties: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="invalid workflow command"):
        workflow_command(command, "m", properties)


def test_mask_writes_nothing_but_masks_for_hostile_values(gh: GithubEnv) -> None:
    for value in HOSTILE:
        gh.mask(value)
    assert isinstance(gh.stdout, io.StringIO)
    lines = gh.stdout.getvalue().splitlines()
    # One mask per line of each value, and every line of output is a mask of one of them.
    wanted = {line for value in HOSTILE for line in value.splitlines() if line.strip()}
    assert len(lines) == len(wanted)
    assert sorted(parse_command(line) for line in lines) == sorted(
        ("add-mask", {}, w) for w in wanted
    )


def test_publish(tmp_path: Path, gh: GithubEnv) -> None:
    result = {
        "release_id": 12,
        "service": "notes",
        "kind": "release",
        "outcome": "succeeded",
        "exit_code": 0,
        "image": {"ref": "notes:ab12", "digest": "sha256:" + "e" * 64},
        "steps": [{"name": "preflight", "status": "ok", "duration_s": 0.4, "summary": "x"}],
    }
    paths = write_reports(result, tmp_path / "reports")
    assert publish(result, paths, gh)
    assert gh.output_path is not None and gh.summary_path is not None
    assert parse_outputs(gh.output_path.read_text(encoding="utf-8")) == {
        "release-id": "12",
        "outcome": "succeeded",
        "digest": "sha256:" + "e" * 64,
        "report-json": str(tmp_path / "reports" / "release-12.json"),
        "report-markdown": str(tmp_path / "reports" / "release-12.md"),
    }
    summary = gh.summary_path.read_text(encoding="utf-8")
    assert summary.startswith("## notes release 12: SUCCEEDED\n")
    assert "| 1 | preflight | ok | 0.4s | x |" in summary
    assert not publish(result, paths, None)


@pytest.mark.parametrize("outcome", ["dry_run", "blocked", "rolled_back", "failed"])
def test_publish_sets_digest_only_for_a_promoted_image(
    tmp_path: Path, gh: GithubEnv, outcome: str
) -> None:
    result = {
        "release_id": 7,
        "service": "notes",
        "kind": "dry-run" if outcome in ("dry_run", "blocked") else "release",
        "outcome": outcome,
        "image": {"ref": "notes:ab12", "digest": "sha256:" + "f" * 64},
    }
    publish(result, write_reports(result, tmp_path / "r"), gh)
    assert gh.output_path is not None
    outputs = parse_outputs(gh.output_path.read_text(encoding="utf-8"))
    assert outputs["outcome"] == outcome
    assert outputs["digest"] == ""


def test_publish_renders_into_the_room_left(tmp_path: Path, gh: GithubEnv) -> None:
    assert gh.summary_path is not None
    gh.summary_path.write_text("x" * (MIB - 5000) + "\n", encoding="utf-8")
    result = {
        "release_id": 3,
        "service": "notes",
        "outcome": "failed",
        "smoke": {
            "ok": False,
            "checks": [{"name": f"c{i}", "ok": False, "failures": ["boom"]} for i in range(5000)],
        },
    }
    publish(result, write_reports(result, tmp_path / "r"), gh)
    data = gh.summary_path.read_bytes()
    assert len(data) <= MIB
    # Rendered to fit (rows cut by the renderer), not cut blindly by the writer.
    assert TRUNCATION_NOTE.encode() not in data
    assert b"## notes release 3: FAILED" in data and b"more rows (see the JSON report)" in data
