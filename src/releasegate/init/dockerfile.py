"""A service's Dockerfile as ``releasegate init`` reads it: what to configure from it,
and whether it is ready for releasegate's offline build and blue/green deploys.

Nothing here edits the Dockerfile; :func:`readiness` says what to change. The checks:

- **offline base image**: ``ARG BASE_IMAGE`` before the first ``FROM`` and a stage
  ``FROM ${BASE_IMAGE}``, so that the offline build can pass its local base image
  (``build.base_image``) as a build argument;
- **offline wheels**: an ``OFFLINE`` build argument, the ``wheels`` folder copied into a
  stage and a ``pip install --no-index`` for when it is set: offline, releasegate builds
  the wheels on the host and the image build has no network;
- **health**: a ``HEALTHCHECK``, so that Docker reports the container's health (deploys
  wait on ``deploy.readiness_path`` either way);
- **user**: the final stage runs as a ``USER`` other than root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIRECTIVE_RE = re.compile(r"^#\s*escape\s*=\s*(\S)\s*$", re.IGNORECASE)
_BASE_IMAGE_REF_RE = re.compile(r"^\$(?:\{BASE_IMAGE\}|BASE_IMAGE)(?::|@|$)")
_URL_PATH_RE = re.compile(r"https?://[^/\s\"']+(/[^\s\"'?]*)")
_ROOT_USERS = {"root", "0", "root:root", "0:0"}


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, its continuation lines joined."""

    keyword: str  # upper case: FROM, ARG, RUN, ...
    arguments: str
    line: int  # where it starts, from 1


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, without comments, continuations joined."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives come first, before any other line
        match = _DIRECTIVE_RE.match(line.strip())
        if match is None:
            break
        escape = match.group(1)
    found: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue  # a comment, also inside a continuation; a blank line between
        if not parts:
            start = number
        continued = stripped.endswith(escape)
        parts.append(stripped[: -len(escape)].rstrip() if continued else stripped)
        if continued:
            continue
        keyword, _, arguments = " ".join(parts).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip(), start))
        parts = []
    if parts:
        keyword, _, arguments = " ".join(parts).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip(), start))
    return found


def _final_stage(found: list[Instruction]) -> list[Instruction]:
    froms = [i for i, ins in enumerate(found) if ins.keyword == "FROM"]
    return found[froms[-1] :] if froms else found


def _from_image(ins: Instruction) -> str:
    words = [w for w in ins.arguments.split() if not w.startswith("--")]
    return words[0] if words else ""


def _arg_names(ins: Instruction) -> list[str]:
    return [word.split("=", 1)[0] for word in ins.arguments.split()]


def exposed_port(text: str) -> int | None:
    """The first port the final stage EXPOSEs (``8000``, ``8000/tcp``), if any."""
    for ins in _final_stage(instructions(text)):
        if ins.keyword == "EXPOSE":
            for word in ins.arguments.split():
                number = word.split("/", 1)[0]
                if number.isdigit() and 0 < int(number) < 65536:
                    return int(number)
    return None


def port_variable(text: str) -> tuple[str, int | None] | None:
    """An ``ENV`` of the final stage that names the app's port (``PORT=8000``,
    ``NOTES_PORT=8000``): its name and value. With host networking releasegate sets it
    to each color's port."""
    for ins in _final_stage(instructions(text)):
        if ins.keyword != "ENV":
            continue
        words = ins.arguments.split()
        if not words:
            continue
        pairs = (
            [tuple(w.split("=", 1)) for w in words if "=" in w]
            if "=" in words[0]
            else [(words[0], " ".join(words[1:]))]  # the old form: ENV NAME value
        )
        for name, value in pairs:
            if name.upper() == "PORT" or name.upper().endswith("_PORT"):
                value = value.strip("\"'")
                return name, int(value) if value.isdigit() else None
    return None


def healthcheck_path(text: str) -> str | None:
    """The URL path the HEALTHCHECK requests (``curl -f http://localhost:8000/ready``)."""
    for ins in instructions(text):
        if ins.keyword == "HEALTHCHECK" and (match := _URL_PATH_RE.search(ins.arguments)):
            return match.group(1) or "/"
    return None


@dataclass(frozen=True)
class Finding:
    """One readiness check of the Dockerfile: fine, or what to change."""

    topic: str
    ok: bool
    message: str

    def to_dict(self) -> dict[str, object]:
        return {"topic": self.topic, "ok": self.ok, "message": self.message}


def _base_image(found: list[Instruction]) -> Finding:
    topic = "offline base image"
    froms = [ins for ins in found if ins.keyword == "FROM"]
    if not froms:
        return Finding(topic, False, "the Dockerfile has no FROM instruction")
    before = [ins for ins in found[: found.index(froms[0])] if ins.keyword == "ARG"]
    declared = any("BASE_IMAGE" in _arg_names(ins) for ins in before)
    used = any(_BASE_IMAGE_REF_RE.match(_from_image(ins)) for ins in froms)
    if declared and used:
        return Finding(topic, True, "ARG BASE_IMAGE before the first FROM ${BASE_IMAGE}")
    current = _from_image(froms[0])
    add = [] if declared else [f"add 'ARG BASE_IMAGE={current}' before the first FROM"]
    if not used:
        add.append(f"write 'FROM ${{BASE_IMAGE}}' instead of 'FROM {current}'")
    return Finding(
        topic,
        False,
        "; ".join(add) + " (line " + str(froms[0].line) + "): the offline build passes its"
        " local base image (build.base_image) as the build argument BASE_IMAGE",
    )


def _offline_wheels(found: list[Instruction]) -> Finding:
    topic = "offline wheels"
    declared = any(ins.keyword == "ARG" and "OFFLINE" in _arg_names(ins) for ins in found)
    copied = any(
        ins.keyword in ("COPY", "ADD") and "wheel" in ins.arguments.lower() for ins in found
    )
    no_index = any(ins.keyword == "RUN" and "--no-index" in ins.arguments for ins in found)
    if declared and copied and no_index:
        return Finding(topic, True, "ARG OFFLINE, the wheels folder copied, pip --no-index")
    missing = []
    if not declared:
        missing.append("declare 'ARG OFFLINE=0' in the stage that installs the requirements")
    if not copied:
        missing.append(
            "copy the wheels folder into it ('COPY requirements.txt wheel[s] /tmp/install/':"
            " wheel[s] copies it only when it exists)"
        )
    if not no_index:
        missing.append(
            "when OFFLINE is 1, install with 'pip install --no-index --find-links"
            " /tmp/install -r /tmp/install/requirements.txt'"
        )
    return Finding(
        topic,
        False,
        "; ".join(missing) + ": offline, releasegate builds the wheels on the host into"
        " wheels/ and the image build runs with no network",
    )


def _health(found: list[Instruction], readiness_path: str) -> Finding:
    topic = "health"
    checks = [ins for ins in found if ins.keyword == "HEALTHCHECK"]
    if checks and checks[-1].arguments.split()[:1] != ["NONE"]:
        return Finding(topic, True, "HEALTHCHECK present")
    return Finding(
        topic,
        False,
        "add a HEALTHCHECK (e.g. one that requests " + readiness_path + "), so that Docker"
        " reports the container's health; deploys wait on deploy.readiness_path"
        f" ({readiness_path}) either way, which the service must answer with 200 once ready",
    )


def _user(found: list[Instruction]) -> Finding:
    topic = "user"
    users = [ins for ins in _final_stage(found) if ins.keyword == "USER"]
    if users and users[-1].arguments.strip() not in _ROOT_USERS:
        return Finding(topic, True, f"runs as USER {users[-1].arguments.strip()}")
    return Finding(
        topic,
        False,
        "add 'USER 65534:65534' (or a user of the image) to the final stage, after the"
        " install steps: the service should not run as root",
    )


def readiness(text: str, readiness_path: str) -> list[Finding]:
    """Every check of the module docs, in order."""
    found = instructions(text)
    return [
        _base_image(found),
        _offline_wheels(found),
        _health(found, readiness_path),
        _user(found),
    ]
