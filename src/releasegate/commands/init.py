"""``releasegate init``: a thin layer over :func:`releasegate.init.init_project`."""

from __future__ import annotations

from pathlib import Path

import click

from releasegate import GITHUB_REPOSITORY


def _echo(text: str = "") -> None:
    from releasegate.output import echo

    echo(text)


@click.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The service repository.",
)
@click.option("--service", metavar="NAME", help="Service name (default: the folder's name).")
@click.option(
    "--stores",
    default="postgres,redis",
    show_default=True,
    metavar="LIST",
    help="Stores of the service, comma-separated: postgres,redis,qdrant.",
)
@click.option(
    "--dockerfile",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="The service's Dockerfile, relative to --dir (default: found in the repository).",
)
@click.option(
    "--releasegate-repository",
    default=GITHUB_REPOSITORY,
    show_default=True,
    metavar="OWNER/NAME",
    help="Where the caller workflows find releasegate's reusable workflows.",
)
@click.option(
    "--releasegate-ref",
    metavar="REF",
    help="Tag or commit of those workflows (default: this version's tag, v<version>).",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def init(
    directory: Path,
    service: str | None,
    stores: str,
    dockerfile: Path | None,
    releasegate_repository: str,
    releasegate_ref: str | None,
    force: bool,
    as_json: bool,
) -> int:
    """Set up releasegate in an existing service repository.

    Writes releasegate.toml, smoke.toml, loadtests/locustfile.py, the caller workflows
    in .github/workflows and .gitignore entries; keeps every file that exists unless
    --force. Checks the Dockerfile for the offline build and prints what to change,
    without editing it.
    """
    from releasegate.init import InitOptions, init_project

    result = init_project(
        InitOptions(
            directory=directory,
            service=service,
            stores=stores.split(","),
            dockerfile=dockerfile,
            releasegate_repository=releasegate_repository,
            releasegate_ref=releasegate_ref,
            force=force,
        )
    )
    if as_json:
        from releasegate.output import echo_json

        echo_json(result.to_dict())
        return 0
    _echo(f"releasegate init: service {result.service} in {result.root}")
    for path in result.written:
        _echo(f"  wrote  {path}")
    for path in result.kept:
        _echo(f"  kept   {path} (it exists; --force overwrites it)")
    if result.gitignore_added:
        _echo(f"  .gitignore: added {', '.join(result.gitignore_added)}")
    _echo("found: " + ", ".join(f"{key} {value}" for key, value in result.detected.items()))
    _echo("Dockerfile and migrations checks (nothing was edited):")
    for finding in result.findings:
        _echo(f"  {'ok' if finding.ok else 'change':<7} {finding.topic}: {finding.message}")
    _echo(f"next: {result.next_command}")
    return 0
