"""``releasegate init``: set up releasegate in an existing service repository.

:func:`init_project` reads the repository (its Dockerfile, an Alembic folder, the port
the service listens on) and writes what releasegate needs, from templates shipped with
the package:

- ``releasegate.toml``: the service, the stores (Postgres always; Redis and Qdrant when
  asked), the build context, blue/green ports, and SLO thresholds that agree between the
  gate and the post-promotion watch;
- ``smoke.toml`` and ``loadtests/locustfile.py``, whose request names match the
  threshold scopes;
- the caller workflows ``.github/workflows/releasegate-{staging,production,rollback}.yml``,
  calling releasegate's reusable workflows at ``OWNER/REPO@REF``;
- a starter Alembic folder when there is none, and a README in each new Redis or Qdrant
  migrations folder;
- ``.gitignore`` entries for releasegate's working files (appended once).

An existing file is kept unless ``force``. The Dockerfile is never edited: its readiness
for the offline build and for deploys is reported (:mod:`releasegate.init.dockerfile`).
Bad input is a :class:`~releasegate.errors.ConfigError` and nothing is written.

Only the standard library is imported here, so that ``releasegate init`` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from releasegate import GITHUB_REPOSITORY, __version__
from releasegate.errors import ConfigError
from releasegate.init import detect, dockerfile
from releasegate.init.render import ServicePlan, render_alembic, render_files, render_store_readme
from releasegate.naming import SERVICE_NAME_PATTERN

STORES = ("postgres", "redis", "qdrant")
DEFAULT_STORES = ("postgres", "redis")
DEFAULT_PORT = 8000
STARTER_MIGRATIONS = "migrations/postgres"
_REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,254}$")
_NOT_IN_NAME_RE = re.compile(r"[^a-z0-9_.-]+")


@dataclass(frozen=True)
class InitOptions:
    """What ``releasegate init`` was asked for."""

    directory: Path = Path(".")
    service: str | None = None  # None: from the folder's name
    stores: Sequence[str] = DEFAULT_STORES
    dockerfile: Path | None = None  # None: found in the repository
    releasegate_repository: str = GITHUB_REPOSITORY
    releasegate_ref: str | None = None  # None: this version's tag, v<version>
    force: bool = False


@dataclass
class InitResult:
    """What :func:`init_project` found, wrote and kept."""

    root: Path
    service: str
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    gitignore_added: list[str] = field(default_factory=list)
    detected: dict[str, str] = field(default_factory=dict)
    findings: list[dockerfile.Finding] = field(default_factory=list)

    @property
    def next_command(self) -> str:
        """The first release, as the README documents it."""
        image = f"{self.service}:v1"
        return f"releasegate build --tag {image} && releasegate release --image {image}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "service": self.service,
            "written": self.written,
            "kept": self.kept,
            "gitignore_added": self.gitignore_added,
            "detected": self.detected,
            "dockerfile_checks": [finding.to_dict() for finding in self.findings],
            "next": self.next_command,
        }


def service_name(given: str | None, root: Path) -> str:
    """``given`` when it is a valid service name, else one made of the folder's name."""
    if given is not None:
        if not re.match(SERVICE_NAME_PATTERN, given):
            raise ConfigError(
                f"invalid service name {given!r}: lower-case letters, digits, '_', '.' and"
                " '-', starting with a letter or digit, at most 63 characters"
            )
        return given
    name = _NOT_IN_NAME_RE.sub("-", root.name.lower()).lstrip("_.-")[:63]
    if not re.match(SERVICE_NAME_PATTERN, name):
        raise ConfigError(f"cannot make a service name of folder {root.name!r}: use --service")
    return name


def parse_stores(stores: Sequence[str]) -> tuple[str, ...]:
    """The stores in releasegate's order; Postgres is required (ledger and lock live there)."""
    chosen = {store.strip().lower() for store in stores if store.strip()}
    unknown = sorted(chosen - set(STORES))
    if unknown:
        raise ConfigError(f"unknown store {unknown[0]!r}: choose among {', '.join(STORES)}")
    if "postgres" not in chosen:
        raise ConfigError("the stores must include postgres: the release ledger lives there")
    return tuple(store for store in STORES if store in chosen)


def _check_source(repository: str, ref: str) -> None:
    if not _REPOSITORY_RE.match(repository):
        raise ConfigError(f"invalid --releasegate-repository {repository!r}: write OWNER/NAME")
    if not _REF_RE.match(ref) or ".." in ref:
        raise ConfigError(f"invalid --releasegate-ref {ref!r}: a tag, branch or commit SHA")


def _plan(options: InitOptions, root: Path) -> tuple[ServicePlan, InitResult, bool]:
    """Everything decided before a file is written; whether an Alembic folder exists."""
    stores = parse_stores(options.stores)
    service = service_name(options.service, root)
    ref = options.releasegate_ref or f"v{__version__}"
    _check_source(options.releasegate_repository, ref)
    found = detect.scan(root)
    docker_path = detect.choose_dockerfile(root, found, options.dockerfile)
    if not docker_path.is_relative_to(root):
        raise ConfigError(f"the Dockerfile {docker_path} is outside {root}")
    try:
        text = docker_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {docker_path}: {exc}") from None
    context = docker_path.parent
    migrations = detect.find_migrations(root, found)
    port_variable = dockerfile.port_variable(text)
    exposed = dockerfile.exposed_port(text)
    variable_port = port_variable[1] if port_variable else None
    port = exposed or variable_port or DEFAULT_PORT
    port_source = "EXPOSE" if exposed else "ENV" if variable_port else "the default"
    probe = dockerfile.healthcheck_path(text)
    plan = ServicePlan(
        service=service,
        stores=stores,
        build_context=detect.relative(context, root),
        dockerfile=docker_path.name,
        requirements="requirements.txt" if (context / "requirements.txt").is_file() else None,
        migrations=detect.relative(migrations.folder, root) if migrations else STARTER_MIGRATIONS,
        alembic_ini=(
            detect.relative(migrations.alembic_ini, root)
            if migrations and migrations.alembic_ini
            else None
        ),
        container_port=port,
        port_env=port_variable[0] if port_variable else None,
        readiness_path=probe or "/readyz",
        health_path=probe or "/healthz",
        releasegate_repository=options.releasegate_repository,
        releasegate_ref=ref,
    )
    result = InitResult(root=root, service=service)
    result.detected = {
        "Dockerfile": detect.relative(docker_path, root),
        "build context": plan.build_context,
        "port": f"{port} ({port_source})",
        "port variable": plan.port_env or "none (bridge network)",
        "migrations": plan.migrations + ("" if migrations else " (a new starter)"),
        "folders read": str(found.folders),
    }
    result.findings = dockerfile.readiness(text, plan.readiness_path)
    if migrations and not detect.shares_connection(migrations.folder / "env.py"):
        result.findings.append(
            dockerfile.Finding(
                "migrations",
                False,
                f"{plan.migrations}/env.py never reads config.attributes['connection']:"
                " releasegate runs revisions on a connection it hands over there, with its"
                " lock and statement timeouts (Alembic's 'sharing a connection' recipe)",
            )
        )
    return plan, result, migrations is not None


def _files(plan: ServicePlan, root: Path, has_migrations: bool) -> dict[str, str]:
    files = render_files(plan)
    if not has_migrations:
        files.update(render_alembic(plan))
    for store in plan.stores[1:]:
        folder = f"migrations/{store}"
        if not (root / folder).exists():
            files[f"{folder}/README.md"] = render_store_readme(plan, store)
    return files


def _gitignore_entries(plan: ServicePlan) -> list[str]:
    # The offline build's wheels (and their stamp file) go into the build context.
    wheels = "/wheels/" if plan.build_context == "." else f"/{plan.build_context}/wheels/"
    return [".releasegate/", wheels]


def _normalized(entry: str) -> str:
    return entry.strip().strip("/")


def update_gitignore(path: Path, entries: Sequence[str]) -> list[str]:
    """Append the ``entries`` that ``path`` lacks, under one comment; the ones added."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    have = {_normalized(line) for line in text.splitlines()}
    missing = [entry for entry in entries if _normalized(entry) not in have]
    if missing:
        lead = "\n" if text and not text.endswith("\n") else ""
        block = "# releasegate's working files and the offline build's wheels\n"
        path.write_text(text + lead + block + "".join(f"{e}\n" for e in missing), "utf-8")
    return missing


def init_project(options: InitOptions) -> InitResult:
    """Write releasegate's files into ``options.directory``; see the module docs."""
    root = options.directory.resolve()
    if not root.is_dir():
        raise ConfigError(f"not a folder: {options.directory}")
    plan, result, has_migrations = _plan(options, root)
    try:
        for relative_path, content in _files(plan, root, has_migrations).items():
            target = root / relative_path
            if target.exists() and not options.force:
                result.kept.append(relative_path)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
            result.written.append(relative_path)
        result.gitignore_added = update_gitignore(root / ".gitignore", _gitignore_entries(plan))
    except OSError as exc:
        raise ConfigError(f"cannot write in {root}: {exc}") from None
    return result
