"""The files ``releasegate init`` writes, rendered from the templates shipped in
``releasegate/templates`` (package data). A template holds ``<<name>>`` placeholders and
nothing else to expand, so TOML, YAML, Python and Mako text pass through untouched.

The SLO thresholds are derived here from one load profile, so that the gate's and the
watch's rules agree: each user of the starter locustfile sends
:data:`REQUESTS_PER_USER_S` requests a second, and the ``rps`` floor is a share of what
the users send, for the gate's users and for the watch's alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

_PLACEHOLDER_RE = re.compile(r"<<([a-z_]+)>>")
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")

REQUESTS_PER_USER_S = 2
GATE_USERS = 10
GATE_DURATION_S = 30
WATCH_USERS = 5
# The rps floor: three quarters of what the users send. Fewer answers a second means
# requests queue or fail.
RPS_SHARE = 0.75
# Rules that do not depend on the load's size: the same for the gate and the watch.
LATENCY_RULES: dict[str, tuple[str, ...]] = {
    "total": ("p95 < 500ms", "p99 < 1s", "error_rate < 1%"),
    "GET /version": ("p95 < 300ms",),
}
WORKFLOWS = ("releasegate-staging.yml", "releasegate-production.yml", "releasegate-rollback.yml")
# Secrets of the production target, each passed by name from PRODUCTION_<name>.
PRODUCTION_SECRETS = (
    "DOCKER_HOST",
    "DOCKER_SSH_KEY",
    "DOCKER_KNOWN_HOSTS",
    "DATABASE_URL",
    "REDIS_URL",
    "QDRANT_URL",
    "QDRANT_API_KEY",
    "BACKUP_AWS_ACCESS_KEY_ID",
    "BACKUP_AWS_SECRET_ACCESS_KEY",
    "BACKUP_AWS_ENDPOINT_URL",
    "BACKUP_AWS_REGION",
)
STORE_URL_ENVS = {
    "postgres": ("DATABASE_URL",),
    "redis": ("REDIS_URL",),
    "qdrant": ("QDRANT_URL", "QDRANT_API_KEY"),
}
CONFIG_NAME = "releasegate.toml"


def template(name: str) -> str:
    """The text of the template ``name`` (a path under ``releasegate/templates``)."""
    return (
        resources.files("releasegate")
        .joinpath("templates", *name.split("/"))
        .read_text(encoding="utf-8")
    )


def render(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every ``<<name>>`` replaced by ``values[name]``."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for the template placeholder <<{name}>>")
        return values[name]

    return _PLACEHOLDER_RE.sub(value, text)


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def thresholds(users: int) -> dict[str, list[str]]:
    """The rules for ``users`` users of the starter locustfile (see the module docs)."""
    rules = {scope: list(scope_rules) for scope, scope_rules in LATENCY_RULES.items()}
    rules["total"].append(f"rps >= {_number(users * REQUESTS_PER_USER_S * RPS_SHARE)}")
    return rules


def toml_table_lines(table: Mapping[str, list[str]]) -> str:
    """``key = ["...", ...]`` lines of a TOML table, keys quoted when they must be."""
    lines = []
    for key, rules in table.items():
        name = key if _BARE_KEY_RE.match(key) else toml_string(key)
        lines.append(f"{name} = [{', '.join(toml_string(rule) for rule in rules)}]")
    return "".join(f"{line}\n" for line in lines)


@dataclass(frozen=True)
class ServicePlan:
    """What the generated files depend on; paths are relative to the repository, with /."""

    service: str
    stores: tuple[str, ...]
    build_context: str
    dockerfile: str  # its name in the build context
    requirements: str | None  # relative to the build context, when there is one
    migrations: str
    alembic_ini: str | None  # only when it is not the migrations folder's own
    container_port: int
    port_env: str | None  # the app's port variable: host networking when known
    readiness_path: str
    health_path: str
    releasegate_repository: str
    releasegate_ref: str

    @property
    def env_passthrough(self) -> list[str]:
        return [name for store in self.stores for name in STORE_URL_ENVS[store]]


def _deploy_lines(plan: ServicePlan) -> str:
    lines = [f"container_port = {plan.container_port}"]
    if plan.port_env:
        lines += [
            "# Host networking: the container reaches the stores at 127.0.0.1 as the host does",
            "# (CI's ephemeral target), and the app listens on the color's port, set in port_env.",
            'network = "host"',
            f"port_env = {toml_string(plan.port_env)}",
        ]
    else:
        lines += [
            "# With the stores at 127.0.0.1 (CI's ephemeral target) the container needs the",
            '# host\'s network: network = "host", and port_env naming the variable the app',
            "# reads its port from (releasegate sets it to each color's port).",
        ]
    return "".join(f"{line}\n" for line in lines)


def render_config(plan: ServicePlan) -> str:
    """releasegate.toml."""
    requirements = (
        f"requirements = {toml_string(plan.requirements)}  # built into wheels/ offline\n"
        if plan.requirements
        else '# requirements = "requirements.txt"  # offline builds turn it into wheels/\n'
    )
    values = {
        "service": plan.service,
        "migrations": toml_string(plan.migrations),
        "alembic_ini_line": (
            f"alembic_ini = {toml_string(plan.alembic_ini)}\n" if plan.alembic_ini else ""
        ),
        "redis_section": template("redis.toml.tmpl") if "redis" in plan.stores else "",
        "qdrant_section": template("qdrant.toml.tmpl") if "qdrant" in plan.stores else "",
        "build_context": toml_string(plan.build_context),
        "dockerfile_line": (
            ""
            if plan.dockerfile == "Dockerfile"
            else f"dockerfile = {toml_string(plan.dockerfile)}\n"
        ),
        "requirements_line": requirements,
        "deploy_lines": _deploy_lines(plan),
        "env_passthrough": json.dumps(plan.env_passthrough),
        "readiness_path": plan.readiness_path,
        "health_path": plan.health_path,
        "rate": str(REQUESTS_PER_USER_S),
        "gate_users": str(GATE_USERS),
        # Half of what the users send in the window.
        "gate_min_requests": str(GATE_USERS * REQUESTS_PER_USER_S * GATE_DURATION_S // 2),
        "gate_thresholds": toml_table_lines(thresholds(GATE_USERS)),
        "watch_users": str(WATCH_USERS),
        "watch_thresholds": toml_table_lines(thresholds(WATCH_USERS)),
    }
    return render(template("releasegate.toml.tmpl"), values)


def pin_note(ref: str) -> str:
    """The comment after a ``uses:`` line: none for a commit, else why a tag is accepted."""
    if _COMMIT_RE.match(ref):
        return ""
    return (
        "  # zizmor: ignore[unpinned-uses] a release tag of releasegate; to pin its commit,"
        " run releasegate init --force --releasegate-ref SHA"
    )


def render_workflows(plan: ServicePlan) -> dict[str, str]:
    """The caller workflows, by path in the repository."""
    secrets = [f"      {name}: ${{{{ secrets.PRODUCTION_{name} }}}}" for name in PRODUCTION_SECRETS]
    values = {
        "service": plan.service,
        "releasegate_repository": plan.releasegate_repository,
        "releasegate_ref": plan.releasegate_ref,
        "pin_note": pin_note(plan.releasegate_ref),
        "config": CONFIG_NAME,
        "target_secrets": "\n".join(secrets),
    }
    return {
        f".github/workflows/{name}": render(template(f"workflows/{name}.tmpl"), values)
        for name in WORKFLOWS
    }


def render_files(plan: ServicePlan) -> dict[str, str]:
    """Every file of a service's releasegate setup, by path in the repository."""
    paths = {"service": plan.service, "readiness_path": plan.readiness_path}
    rate = {"rate": str(REQUESTS_PER_USER_S)}
    return {
        CONFIG_NAME: render_config(plan),
        "smoke.toml": render(
            template("smoke.toml.tmpl"), {**paths, "health_path": plan.health_path}
        ),
        "loadtests/locustfile.py": render(template("locustfile.py.tmpl"), {**paths, **rate}),
        **render_workflows(plan),
    }


def render_alembic(plan: ServicePlan) -> dict[str, str]:
    """A starter Alembic folder at ``plan.migrations``, for a service without one."""
    folder = plan.migrations
    values = {
        "service": plan.service,
        "url_env": STORE_URL_ENVS["postgres"][0],
        "ini_path": f"{folder}/alembic.ini",
    }
    return {
        f"{folder}/alembic.ini": render(template("alembic/alembic.ini.tmpl"), values),
        f"{folder}/env.py": render(template("alembic/env.py.tmpl"), values),
        f"{folder}/script.py.mako": template("alembic/script.py.mako"),
        # Alembic writes new revisions here; git keeps no empty folder.
        f"{folder}/versions/.gitkeep": "",
    }


def render_store_readme(plan: ServicePlan, store: str) -> str:
    """The README of a new Redis or Qdrant migrations folder."""
    return render(template(f"migrations/{store}-README.md.tmpl"), {"service": plan.service})
