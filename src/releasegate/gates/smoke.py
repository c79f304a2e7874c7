"""Smoke checks: a few declared HTTP requests against one color's base URL.

A check file (TOML, or YAML with the same structure) declares defaults and checks::

    [defaults]
    timeout = "5s"            # per request
    retries = 2               # extra attempts while a check fails
    retry_delay = "500ms"
    headers = { Accept = "application/json" }
    headers_env = { Authorization = "SMOKE_AUTH" }   # header values read from env vars

    [[checks]]
    name = "create a session"
    method = "POST"
    path = "/sessions"
    json = { user_id = 1 }    # or: body = "raw text" (with a content-type header)
    status = [200, 201]       # default 200
    max_latency = "300ms"
    expect = [
      { field = "id", exists = true },
      { field = "user.id", equals = 1 },
      { field = "items", type = "array" },
      { field = "tags", contains = "new" },
    ]

``field`` is a dotted path into the JSON response (``items.0.id`` indexes a list; ``$``
is the whole document). ``exists = false`` asserts absence. ``type`` is one of string,
number, integer, boolean, array, object, null. ``contains`` tests list membership,
a substring, or an object key. Secrets never go in the file: use ``headers_env``.

:func:`load_smoke_file` validates the file (missing, malformed or unknown keys raise
:class:`~releasegate.errors.ConfigError`); :func:`run_smoke` runs the checks in order
with httpx against one base URL and returns a :class:`SmokeReport`.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from releasegate.config import Duration, EnvVarName
from releasegate.config_files import refuse_bom
from releasegate.errors import ConfigError
from releasegate.gates import synthetic
from releasegate.gates.locust_runner import check_target
from releasegate.output import table
from releasegate.secrets import mask_url, redact, register_secret

JsonType = Literal["string", "number", "integer", "boolean", "array", "object", "null"]
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_MISSING = object()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class Assertion(_Model):
    """One assertion on the JSON response; set at least one of its checks."""

    field: str = Field(min_length=1)
    equals: Any = None
    exists: bool | None = None
    type: JsonType | None = None
    contains: Any = None

    @field_validator("field")
    @classmethod
    def _path(cls, value: str) -> str:
        parts = _split_path(value)
        if any(part == "" for part in parts):
            raise ValueError(f"malformed dotted path {value!r}")
        return value

    @model_validator(mode="after")
    def _something_to_check(self) -> Assertion:
        if not {"equals", "exists", "type", "contains"} & self.model_fields_set:
            raise ValueError(
                f"assertion on {self.field!r} needs one of equals, exists, type, contains"
            )
        return self


class Defaults(_Model):
    """Settings every check inherits unless it sets its own."""

    timeout: Duration = 5.0
    retries: int = Field(default=0, ge=0, le=100)
    retry_delay: Duration = 0.5
    max_latency: Duration | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, EnvVarName] = Field(default_factory=dict)


class Check(_Model):
    """One HTTP request and what its response must satisfy."""

    name: str = Field(min_length=1)
    method: str = "GET"
    path: str
    query: dict[str, str | int | float | bool] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, EnvVarName] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    status: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [200])
    expect: list[Assertion] = Field(default_factory=list)
    max_latency: Duration | None = None
    timeout: Duration | None = None
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_delay: Duration | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        method = value.upper()
        if method not in METHODS:
            raise ValueError(f"unknown method {value!r} (expected one of {', '.join(METHODS)})")
        return method

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        if not value.startswith("/") or "://" in value:
            raise ValueError("must be a path starting with '/', relative to the target URL")
        return value

    @field_validator("status", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        statuses = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(statuses, list) and all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            return statuses
        raise ValueError("must be an HTTP status (100-599) or a list of them")

    @model_validator(mode="after")
    def _one_body(self) -> Check:
        if "json_body" in self.model_fields_set and self.body is not None:
            raise ValueError(f"check {self.name!r}: set json or body, not both")
        return self


class SmokeFile(_Model):
    """A whole check file."""

    defaults: Defaults = Field(default_factory=Defaults)
    checks: Annotated[list[Check], Field(min_length=1)]

    @field_validator("checks")
    @classmethod
    def _unique_names(cls, checks: list[Check]) -> list[Check]:
        seen: set[str] = set()
        for check in checks:
            if check.name in seen:
                raise ValueError(f"duplicate check name {check.name!r}")
            seen.add(check.name)
        return checks


def _format_errors(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif err["type"] == "missing":
            problems.append(f"missing required key '{key}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {msg}" if key else msg)
    return f"{source}: " + "; ".join(problems)


def parse_smoke(data: Any, source: str = "smoke file") -> SmokeFile:
    """Validate already-parsed data (a mapping) as a check file."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table/mapping with 'checks'")
    try:
        return SmokeFile.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_smoke_file(path: Path) -> SmokeFile:
    """Read and validate a TOML (``.toml``) or YAML (``.yaml``/``.yml``) check file."""
    if not path.is_file():
        raise ConfigError(f"smoke check file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    suffix = path.suffix.lower()
    data: Any
    if suffix == ".toml":
        try:
            data = tomllib.loads(refuse_bom(text, path.name))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path.name}: invalid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"{path.name}: invalid YAML: {detail}") from None
    else:
        raise ConfigError(f"{path.name}: unsupported check file type (use .toml, .yaml or .yml)")
    return parse_smoke(data, path.name)


# -- assertions -----------------------------------------------------------------------


def _split_path(path: str) -> list[str]:
    if path == "$":
        return []
    return path.removeprefix("$.").split(".")


def resolve(document: Any, path: str) -> Any:
    """The value at a dotted path, or the module's ``_MISSING`` sentinel."""
    node = document
    for part in _split_path(path):
        if isinstance(node, dict):
            if part not in node:
                return _MISSING
            node = node[part]
        elif isinstance(node, list):
            if not part.lstrip("-").isdigit():
                return _MISSING
            index = int(part)
            if not -len(node) <= index < len(node):
                return _MISSING
            node = node[index]
        else:
            return _MISSING
    return node


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``; ``1`` equals ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_assertion(assertion: Assertion, document: Any) -> str | None:
    """None when the assertion holds, else why it does not."""
    value = resolve(document, assertion.field)
    found = value is not _MISSING
    where = assertion.field
    given = assertion.model_fields_set
    if assertion.exists is not None:
        if assertion.exists and not found:
            return f"{where}: missing"
        if not assertion.exists and found:
            return f"{where}: present ({_show(value)}), expected absent"
    if {"equals", "type", "contains"} & given and not found:
        return f"{where}: missing"
    if "equals" in given and not json_equal(value, assertion.equals):
        return f"{where}: {_show(value)} != {_show(assertion.equals)}"
    if assertion.type is not None:
        actual = json_type(value)
        ok = actual == assertion.type or (assertion.type == "number" and actual == "integer")
        if not ok:
            return f"{where}: type {actual}, expected {assertion.type}"
    if "contains" in given:
        needle = assertion.contains
        if isinstance(value, list):
            ok = any(json_equal(item, needle) for item in value)
        elif isinstance(value, str | dict):
            ok = isinstance(needle, str) and needle in value
        else:
            ok = False
        if not ok:
            return f"{where}: {_show(value)} does not contain {_show(needle)}"
    return None


# -- running --------------------------------------------------------------------------


@dataclass
class CheckResult:
    """The outcome of one check (its last attempt)."""

    name: str
    method: str
    path: str
    ok: bool
    status: int | None
    latency_ms: float | None
    attempts: int
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "path": self.path,
            "ok": self.ok,
            "status": self.status,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "attempts": self.attempts,
            "failures": [redact(f) for f in self.failures],
        }


@dataclass
class SmokeReport:
    """All checks against one target."""

    target: str
    results: list[CheckResult]
    duration_s: float
    marker: str = synthetic.MANUAL  # the X-Releasegate-Synthetic value of every request

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "passed": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "duration_s": round(self.duration_s, 3),
            "synthetic_marker": self.marker,
            "checks": [r.to_dict() for r in self.results],
        }

    def render_text(self) -> str:
        rows = [
            (
                r.name,
                f"{r.method} {r.path}",
                "-" if r.status is None else r.status,
                "-" if r.latency_ms is None else f"{r.latency_ms:.1f}",
                r.attempts,
                "ok" if r.ok else "FAIL",
            )
            for r in self.results
        ]
        lines = [
            f"smoke checks against {self.target}",
            "",
            table(["check", "request", "status", "ms", "attempts", "result"], rows),
        ]
        for result in self.failed:
            lines.append("")
            lines.append(f"{result.name}:")
            lines += [f"  - {failure}" for failure in result.failures]
        verdict = "passed" if self.ok else "FAILED"
        lines += [
            "",
            f"{len(self.results) - len(self.failed)}/{len(self.results)} checks passed;"
            f" {verdict} in {self.duration_s:.2f}s",
        ]
        return "\n".join(lines)


def _headers(
    plain: Mapping[str, str], from_env: Mapping[str, str], env: Mapping[str, str]
) -> dict[str, str]:
    headers = dict(plain)
    for header, var in from_env.items():
        value = env.get(var)
        if not value:
            raise ConfigError(f"environment variable {var} (header {header}) is not set")
        register_secret(value)
        headers[header] = value
    return headers


def _attempt(
    client: httpx.Client, check: Check, url: str, headers: dict[str, str], timeout: float
) -> tuple[int | None, float | None, list[str], httpx.Response | None]:
    kwargs: dict[str, Any] = {"params": check.query or None, "headers": headers}
    if "json_body" in check.model_fields_set:
        kwargs["json"] = check.json_body
    elif check.body is not None:
        kwargs["content"] = check.body.encode()
    started = time.perf_counter()
    try:
        response = client.request(check.method, url, timeout=timeout, **kwargs)
    except httpx.TimeoutException:
        return None, None, [f"no response within {timeout:g}s"], None
    except httpx.HTTPError as exc:
        return None, None, [f"request failed: {type(exc).__name__}: {exc}"], None
    latency = (time.perf_counter() - started) * 1000
    return response.status_code, latency, [], response


def run_check(
    client: httpx.Client,
    check: Check,
    target: str,
    defaults: Defaults,
    env: Mapping[str, str],
    sleep: Any = time.sleep,
    marker: str = synthetic.MANUAL,
) -> CheckResult:
    """Run one check, retrying while it fails; every request carries the synthetic marker.

    A User-Agent the check declares wins over releasegate's; the marker header always wins.
    """
    declared = _headers(
        {**defaults.headers, **check.headers}, {**defaults.headers_env, **check.headers_env}, env
    )
    headers = synthetic.add_to(declared, marker)
    retries = check.retries if check.retries is not None else defaults.retries
    delay = check.retry_delay if check.retry_delay is not None else defaults.retry_delay
    timeout = check.timeout if check.timeout is not None else defaults.timeout
    max_latency = check.max_latency if check.max_latency is not None else defaults.max_latency
    url = target + check.path
    status: int | None = None
    latency: float | None = None
    failures: list[str] = []
    attempts = 0
    for attempt in range(1 + retries):
        attempts = attempt + 1
        status, latency, failures, response = _attempt(client, check, url, headers, timeout)
        if response is not None:
            if response.status_code not in check.status:
                expected = " or ".join(str(s) for s in check.status)
                snippet = " ".join(response.text[:120].split())
                failures.append(
                    f"status {response.status_code}, expected {expected}"
                    + (f" (body: {snippet})" if snippet else "")
                )
            if latency is not None and max_latency is not None and latency > max_latency * 1000:
                failures.append(f"latency {latency:.1f}ms > max {max_latency * 1000:g}ms")
            if check.expect:
                try:
                    document = response.json()
                except ValueError:
                    failures.append("response is not JSON")
                else:
                    failures += [
                        problem
                        for assertion in check.expect
                        if (problem := check_assertion(assertion, document)) is not None
                    ]
        if not failures:
            break
        if attempt < retries:
            sleep(delay)
    return CheckResult(
        name=check.name,
        method=check.method,
        path=check.path,
        ok=not failures,
        status=status,
        latency_ms=latency,
        attempts=attempts,
        failures=failures,
    )


def run_smoke(
    spec: SmokeFile,
    target: str,
    *,
    env: Mapping[str, str] | None = None,
    client: httpx.Client | None = None,
    synthetic_id: int | str | None = None,
) -> SmokeReport:
    """Run every check in order against ``target`` (a base URL such as a color's port).

    Every request carries ``X-Releasegate-Synthetic: <synthetic_id>`` (``manual`` when
    None) and releasegate's synthetic User-Agent.
    """
    marker = synthetic.marker_for(synthetic_id)
    base = check_target(target)
    env = os.environ if env is None else env
    started = time.perf_counter()
    own_client = client is None
    http = client or httpx.Client(follow_redirects=False)
    try:
        results = [
            run_check(http, check, base, spec.defaults, env, marker=marker) for check in spec.checks
        ]
    finally:
        if own_client:
            http.close()
    return SmokeReport(
        target=mask_url(base),
        results=results,
        duration_s=time.perf_counter() - started,
        marker=marker,
    )
