"""Host-built wheels: the Python half of releasegate's offline (air-gapped) builds.

In offline mode nothing inside ``docker build`` may reach a package index, so the
service's requirements are turned into wheels on the host with ``pip wheel`` (which uses
the host's pip configuration, proxy and trusted CAs) and copied into the build context;
the Dockerfile installs them with ``pip install --no-index --find-links``.

Wheels are built by a host interpreter of the base image's Python major.minor (the
base image built by ``scripts/build-base-image.sh`` gives its full version in the
``releasegate.python`` label). pip resolves with the host's exact version, so a
dependency behind a marker such as ``python_full_version < "3.11.3"`` may be needed by
the image but not by the host: after ``pip wheel``, the wheels' ``Requires-Dist`` are
evaluated for the target version and what is missing is added, until nothing is.

The folder is cached: a stamp file records the hash of the requirements file, the host
interpreter and the target version, and a matching stamp skips ``pip wheel``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from releasegate.errors import CheckFailed, ConfigError, InfraError
from releasegate.secrets import redact

STAMP_NAME = ".releasegate-wheels.json"
MAX_ROUNDS = 5
# Run by the wheel-building interpreter: the requirements of the wheels in argv[1] whose
# markers hold for the target environment in argv[2] and that no wheel there provides.
_MISSING = r"""
import json, pathlib, sys, zipfile
try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
env = {**default_environment(), **json.loads(sys.argv[2]), "extra": ""}
have, wanted = set(), []
for wheel in pathlib.Path(sys.argv[1]).glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = archive.read(meta).decode("utf-8").split("\n\n", 1)[0]
    for line in headers.splitlines():
        key, _, value = line.partition(":")
        if key == "Name":
            have.add(canonicalize_name(value.strip()))
        elif key == "Requires-Dist":
            wanted.append(Requirement(value.strip()))
missing = set()
for req in wanted:
    if req.marker is not None and not req.marker.evaluate(env):
        continue
    if canonicalize_name(req.name) not in have:
        req.marker = None
        missing.add(str(req))
print(json.dumps(sorted(missing)))
"""
_PROBE = (
    "import json, sys, sysconfig;"
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2],"
    " 'implementation': sys.implementation.name, 'platform': sysconfig.get_platform()}))"
)


def _count(wheels: list[str]) -> str:
    return f"{len(wheels)} wheel{'' if len(wheels) == 1 else 's'}"


@dataclass(frozen=True)
class WheelsResult:
    """The wheels folder after :func:`build_wheels`."""

    directory: Path
    wheels: list[str]
    cached: bool
    python_version: str
    duration_s: float
    log_tail: list[str] = field(default_factory=list)

    @property
    def stamp(self) -> Path:
        return self.directory / STAMP_NAME

    def summary(self) -> str:
        """One line on what the build context holds now, and where."""
        if self.cached:
            return (
                f"wheels: reused the {_count(self.wheels)} in {self.directory}"
                f" ({STAMP_NAME} matches the requirements)"
            )
        return (
            f"wheels: wrote {_count(self.wheels)} and {STAMP_NAME} to {self.directory}"
            " (inside the build context: keep wheels/ out of version control)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "stamp": str(self.stamp),
            "wheels": self.wheels,
            "cached": self.cached,
            "python_version": self.python_version,
            "duration_s": round(self.duration_s, 3),
        }


def find_python(version: str | None) -> str:
    """A host interpreter of Python ``version`` (``"3.11"`` or ``"3.11.2"``): this one, or
    ``pythonX.Y`` from PATH."""
    if version is not None:
        version = ".".join(version.split(".")[:2])
    current = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version is None or version == current:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        raise ConfigError(
            f"the base image runs Python {version} but the host has no python{version}"
            f" to build its wheels with (releasegate runs on Python {current})"
        )
    return found


def interpreter_facts(python: str) -> dict[str, str]:
    """Version, implementation and platform of an interpreter (they decide wheel tags)."""
    try:
        result = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot run the Python interpreter {python}: {exc}") from None
    facts: dict[str, str] = json.loads(result.stdout)
    return facts


def _stamp(requirements: Path, facts: dict[str, str], target: str | None) -> dict[str, str]:
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    return {"requirements_sha256": digest, **facts, "target_python": target or facts["version"]}


def _target_environment(version: str) -> dict[str, str]:
    """Marker variables that differ between the host and a target Python ``version``."""
    parts = version.split(".")
    return {
        "python_version": ".".join(parts[:2]),
        "python_full_version": version,
        "implementation_version": version,
    }


def _pip_wheel(python: str, args: list[str], dest: Path, timeout: float) -> list[str]:
    command = [
        python,
        "-m",
        "pip",
        "wheel",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-w",
        str(dest),
        "--find-links",
        str(dest),
        *args,
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise InfraError(f"pip wheel did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise ConfigError(f"cannot run pip wheel with {python}: {exc}") from None
    lines = [redact(line) for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0:
        reason = next(
            (line for line in reversed(lines) if line.lstrip().startswith("ERROR")),
            lines[-1] if lines else "no output",
        )
        raise InfraError(f"pip wheel failed (exit {result.returncode}): {reason.strip()}")
    return lines


def missing_for_target(python: str, dest: Path, target: str) -> list[str]:
    """Requirements the wheels in ``dest`` have on Python ``target`` that no wheel meets."""
    env = json.dumps(_target_environment(target))
    try:
        result = subprocess.run(
            [python, "-c", _MISSING, str(dest), env],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot read the metadata of the wheels in {dest}: {exc}") from None
    missing: list[str] = json.loads(result.stdout)
    return missing


def _wheel_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.whl"))


def build_wheels(
    requirements: Path,
    dest: Path,
    *,
    python: str | None = None,
    target_python: str | None = None,
    on_log: Callable[[str], None] | None = None,
    timeout: float = 900.0,
) -> WheelsResult:
    """Fill ``dest`` with wheels of everything ``requirements`` needs, unless cached.

    ``python`` is the interpreter whose ``pip wheel`` runs (default: this one);
    ``target_python`` the full version of the image's Python (default: the host's). A
    stale folder (other requirements, interpreter or target) is emptied first, so the
    image gets exactly the wheels the requirements resolve to. ``pip`` failing (usually:
    the index is unreachable) is an :class:`InfraError`.
    """
    if not requirements.is_file():
        raise ConfigError(f"requirements file not found: {requirements}")
    python = python or sys.executable
    started = time.monotonic()
    facts = interpreter_facts(python)
    want = _stamp(requirements, facts, target_python)
    stamp_path = dest / STAMP_NAME
    if stamp_path.is_file() and _wheel_files(dest):
        try:
            have = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        if have == want:
            return WheelsResult(
                dest, _wheel_files(dest), True, want["target_python"], time.monotonic() - started
            )
    dest.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    if on_log:
        on_log(
            f"pip wheel -r {requirements.name} -w {dest.name}/ (for Python {want['target_python']})"
        )
    lines = _pip_wheel(python, ["-r", str(requirements)], dest, timeout)
    target = want["target_python"]
    for _ in range(MAX_ROUNDS):
        missing = missing_for_target(python, dest, target)
        if not missing:
            break
        if on_log:
            on_log(f"Python {target} also needs: {', '.join(missing)}")
        lines += _pip_wheel(python, missing, dest, timeout)
    else:
        raise CheckFailed(
            f"the wheels for Python {target} are still incomplete after {MAX_ROUNDS} rounds"
        )
    stamp_path.write_text(json.dumps(want, indent=2) + "\n", encoding="utf-8")
    return WheelsResult(
        dest,
        _wheel_files(dest),
        False,
        target,
        time.monotonic() - started,
        lines[-5:],
    )
