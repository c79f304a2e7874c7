"""Checking a locustfile before any load is sent: it imports, defines a User, and names
the requests that the threshold scopes refer to.

Two checks, each cheap:

* **Import** (:func:`probe_user_classes`): the file is imported in a child Python
  process (gevent's monkey-patching stays out of releasegate), exactly as Locust would
  load it, and the non-abstract ``User`` classes it defines are listed. No user is
  spawned, so nothing is sent.
* **Request names** (:func:`request_names`): read from the source without running it.
  A request is named by its ``name=`` argument, else by its path, as Locust reports it:
  ``self.client.get("/x", name="GET /x")`` is the scope ``"GET /x"`` (also reachable as
  ``"GET GET /x"``, Locust's method plus name). A name built at run time (an f-string, a
  variable) cannot be known statically: then scopes are not checked (see
  :func:`unknown_scopes`).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from releasegate.gates.thresholds import TOTAL_SCOPE

# The HTTP client methods of Locust's HttpUser and FastHttpUser clients.
_CLIENT_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "request"}
PROBE_TIMEOUT_S = 60.0

# Run in a child process: import the locustfile as Locust does (its folder on sys.path)
# and print the names of the User classes Locust would run, as JSON.
_PROBE = """
import importlib.util, inspect, json, sys, traceback
path = sys.argv[1]
sys.path.insert(0, sys.argv[2])
try:
    spec = importlib.util.spec_from_file_location("releasegate_locustfile_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from locust import User
except BaseException as exc:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    print(json.dumps({"error": " ".join(last.split())}))
    sys.exit(0)
users = sorted(
    name for name, obj in vars(module).items()
    if inspect.isclass(obj) and issubclass(obj, User) and not getattr(obj, "abstract", False)
)
print(json.dumps({"users": users}))
"""


@dataclass(frozen=True)
class RequestNames:
    """The request names a locustfile uses: ``(method or None, name)`` pairs."""

    names: set[tuple[str | None, str]] = field(default_factory=set)
    # A request whose name is computed at run time: the set above may be incomplete.
    dynamic: bool = False

    def covers(self, scope: str) -> bool:
        """Whether a threshold scope (a name, or ``"METHOD name"``) names one of them."""
        method, _, rest = scope.partition(" ")
        for known_method, name in self.names:
            if scope == name:
                return True
            if rest and rest == name and known_method in (None, method.upper()):
                return True
        return False


def _constant_str(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _receiver_is_client(node: ast.expr) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "client"
    return isinstance(node, ast.Name) and node.id == "client"


def request_names(source: str) -> RequestNames:
    """The request names in a locustfile's source (see the module docstring)."""
    names: set[tuple[str | None, str]] = set()
    dynamic = False
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        keyword = next((k.value for k in node.keywords if k.arg == "name"), None)
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in _CLIENT_METHODS
            and _receiver_is_client(func.value)
        ):
            args = list(node.args)
            method: str | None = func.attr.upper()
            if func.attr == "request":
                verb = _constant_str(args[0]) if args else None
                method = verb.upper() if verb else None
                args = args[1:]
            named = keyword if keyword is not None else (args[0] if args else None)
            text = _constant_str(named)
            if text is None:
                dynamic = True
            else:
                names.add((method, text))
            continue
        # Anything else that names a request (a wrapper, events.request.fire(name=...)).
        if (text := _constant_str(keyword)) is not None:
            names.add((None, text))
    return RequestNames(names, dynamic)


def unknown_scopes(scopes: Iterable[str], names: RequestNames) -> list[str]:
    """Threshold scopes no request of the locustfile is named after.

    Empty when the locustfile computes a request name at run time or names none
    statically (a custom client): then no scope can be proven missing.
    """
    if names.dynamic or not names.names:
        return []
    return [s for s in dict.fromkeys(scopes) if s != TOTAL_SCOPE and not names.covers(s)]


def probe_user_classes(path: Path, env: dict[str, str]) -> list[str]:
    """Import ``path`` in a child process; the User classes Locust would run.

    Raises :class:`ValueError` with a one-line reason when the import fails.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), str(path.parent)],
            cwd=path.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"importing it took more than {PROBE_TIMEOUT_S:g}s") from None
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if "error" in result:
        raise ValueError(f"it does not import: {result['error']}")
    if "users" not in result:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"it does not import (exit {done.returncode}): {tail}")
    return list(result["users"])
