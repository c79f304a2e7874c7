"""``releasegate build``, ``deploy``, ``ps`` and ``stop``: thin wrappers over
:mod:`releasegate.deploy`.

Exit status: 0 on success; 1 when the new container never became ready, a port is
taken or the color serves traffic; 2 for a config error (including an image that is
neither local nor pullable); 3 when Docker or the ledger database cannot be reached.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from releasegate.cli import CliState, pass_state
from releasegate.output import echo, echo_json

if TYPE_CHECKING:
    from releasegate.config import Settings
    from releasegate.deploy.build import OfflineMode
    from releasegate.ledger import Ledger


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=option)
        pairs[key] = val
    return pairs


def _progress(line: str) -> None:
    echo(line, err=True)


@click.command("build")
@click.option(
    "--offline",
    "mode",
    flag_value="always",
    help="Build offline: local base image (build.base_image) and host-built wheels.",
)
@click.option("--online", "mode", flag_value="never", help="Build from the registry and index.")
@click.option(
    "--auto",
    "mode",
    flag_value="auto",
    help="Offline when no registry answers within 3 s. Default: build.offline (auto).",
)
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Extra tag (repeatable).")
@click.option(
    "--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Build argument."
)
@click.option("--version", "version", metavar="V", help="org.opencontainers.image.version.")
@click.option("--no-cache", is_flag=True, help="Do not use the layer cache.")
@click.option("--quiet", "-q", is_flag=True, help="Do not stream the build log.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def build(
    state: CliState,
    mode: OfflineMode | None,
    tags: tuple[str, ...],
    build_args: tuple[str, ...],
    version: str | None,
    no_cache: bool,
    quiet: bool,
    as_json: bool,
) -> int:
    """Build the service image, labelled and tagged with the git sha.

    The build log goes to stderr; the image id (what `deploy --image` takes) to stdout.
    An offline build says on stderr where it wrote the wheels (wheels/ in the context).
    """
    from releasegate.deploy.build import build as build_image

    result = build_image(
        state.settings(),
        mode=mode,
        tags=tags,
        build_args=_pairs(build_args, "--build-arg"),
        version=version,
        no_cache=no_cache,
        on_log=None if quiet else _progress,
    )
    if as_json:
        echo_json(result.to_dict())
        return 0
    if quiet and result.wheels is not None:  # else the streamed log said it already
        _progress(result.wheels.summary())
    mode_text = "offline" if result.offline else "registry"
    _progress(
        f"built {', '.join(result.tags)} ({result.size_bytes / 1e6:.0f} MB, {mode_text} mode,"
        f" {result.duration_s:.1f}s)"
    )
    echo(result.ref)
    return 0


@contextmanager
def _ledger_release(
    settings: Settings, use_ledger: bool | None, release: int | None, **columns: str | None
) -> Iterator[tuple[Ledger | None, int | None]]:
    """The ledger and release to record in: ``--release`` or a new "deploy" release.

    Without ``--ledger``/``--no-ledger`` the ledger is used when the Postgres URL is set.
    """
    if use_ledger is None:
        use_ledger = bool(settings.env.get(settings.raw.postgres.url_env))
    if not use_ledger:
        if release is not None:
            from releasegate.errors import ConfigError

            raise ConfigError("--release needs the ledger: set the Postgres URL")
        yield None, None
        return
    from releasegate.ledger import Ledger
    from releasegate.runinfo import performer

    with Ledger.open(settings.postgres_url(), "deploy") as ledger:
        if release is not None:
            if ledger.release(release) is None:
                from releasegate.errors import ConfigError

                raise ConfigError(f"no release with id {release} in the ledger")
            yield ledger, release
            return
        release_id = ledger.start_release(settings.service, "deploy", performer(), **columns)
        yield ledger, release_id


@click.command("deploy")
@click.option(
    "--color", required=True, type=click.Choice(["blue", "green"]), help="Color to deploy."
)
@click.option("--image", required=True, metavar="REF", help="Image id, digest or tag.")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Extra container env.")
@click.option("--release", type=int, help="Record into this ledger release (default: a new one).")
@click.option(
    "--ledger/--no-ledger",
    "use_ledger",
    default=None,
    help="Record in the ledger (default: when the Postgres URL is set).",
)
@click.option("--timeout", type=float, help="Seconds to wait for readiness (deploy.ready_timeout).")
@click.option("--force", is_flag=True, help="Deploy even if the router sends this color traffic.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def deploy(
    state: CliState,
    color: str,
    image: str,
    env: tuple[str, ...],
    release: int | None,
    use_ledger: bool | None,
    timeout: float | None,
    force: bool,
    as_json: bool,
) -> int:
    """Run IMAGE as COLOR and wait until it is ready; the other color is left alone.

    The color's old container is replaced first (the color deployed to is the idle one).
    A container that exits or is not ready in time is removed and its last log lines shown.
    """
    from releasegate.deploy.containers import DeployFailed
    from releasegate.deploy.containers import deploy as deploy_color
    from releasegate.ledger import Outcome, StepStatus

    settings = state.settings()
    extra_env = _pairs(env, "--env")
    with _ledger_release(settings, use_ledger, release, image_ref=image) as (ledger, release_id):
        started = time.monotonic()
        try:
            result = deploy_color(
                settings,
                color,
                image,
                release=None if release_id is None else str(release_id),
                extra_env=extra_env,
                force=force,
                ready_timeout=timeout,
                on_progress=None if as_json else _progress,
            )
        except Exception as exc:
            logs = exc.logs if isinstance(exc, DeployFailed) else []
            if logs:
                _progress(f"last {len(logs)} log lines of the {color} container:")
                for line in logs:
                    _progress(f"  | {line}")
            if ledger is not None and release_id is not None:
                detail: dict[str, Any] = {"error": str(exc), "image": image, "logs": logs}
                ledger.record_event(
                    release_id,
                    f"deploy.{color}",
                    StepStatus.FAILED,
                    time.monotonic() - started,
                    detail,
                )
                if release is None:
                    ledger.finish_release(release_id, Outcome.FAILED, {"error": str(exc)})
            raise
        if ledger is not None and release_id is not None:
            ledger.record_event(
                release_id, f"deploy.{color}", StepStatus.OK, result.duration_s, result.to_dict()
            )
            if release is None:
                ledger.finish_release(
                    release_id,
                    Outcome.SUCCEEDED,
                    {"color": color, "container": result.container},
                    git_sha=result.git_sha,
                    image_digest=result.image_id,
                )
    if as_json:
        echo_json({**result.to_dict(), "ledger_release": release_id})
    else:
        recorded = "" if release_id is None else f" (ledger release {release_id})"
        echo(
            f"{color} is ready: {result.container} on port {result.port},"
            f" image {result.image_id[:19]}, ready after {result.ready_after_s:.1f}s{recorded}"
        )
    return 0


def _image_text(ref: str | None, tags: list[str]) -> str:
    """The reference deployed, shortened when it is an id, with a tag when one names it."""
    if not ref:
        return "-"
    if ref.startswith("sha256:"):
        short = ref[:19]
        return f"{tags[0]} ({short})" if tags else short
    return ref


@click.command("ps")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def ps(state: CliState, as_json: bool) -> int:
    """Both colors: container, image, state and health, port and traffic weight."""
    from releasegate.deploy.containers import status
    from releasegate.output import table

    rows = status(state.settings())
    if as_json:
        echo_json([row.to_dict() for row in rows])
        return 0
    echo(
        table(
            ["color", "container", "image", "revision", "state", "health", "port", "weight"],
            [
                (
                    r.color,
                    r.container or "-",
                    _image_text(r.image, r.image_tags),
                    (r.git_sha or "-")[:12],
                    r.state,
                    r.health or "-",
                    r.port,
                    "-" if r.weight is None else r.weight,
                )
                for r in rows
            ],
        )
    )
    return 0


@click.command("stop")
@click.option(
    "--color", required=True, type=click.Choice(["blue", "green"]), help="Color to remove."
)
@click.option("--force", is_flag=True, help="Remove it even if the router sends it traffic.")
@pass_state
def stop(state: CliState, color: str, force: bool) -> int:
    """Stop and remove one color's container (refused while it serves traffic)."""
    from releasegate.deploy.containers import stop as stop_color

    name = stop_color(state.settings(), color, force=force)
    echo(f"removed {name}" if name else f"no {color} container")
    return 0
