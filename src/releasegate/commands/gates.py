"""``releasegate smoke`` and ``releasegate gate``: thin wrappers over :mod:`releasegate.gates`.

Exit status: 0 when every check or rule passed, 1 when one failed or the gate is
inconclusive, 2 for a config error (bad file, malformed rule, broken locustfile).
"""

from __future__ import annotations

from pathlib import Path

import click

from releasegate.cli import CliState, pass_state
from releasegate.output import echo, echo_json
from releasegate.secrets import redact


@click.command("smoke")
@click.option("--target", metavar="URL", help="Base URL of one color (default: smoke.host).")
@click.option(
    "--file",
    "check_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check file, TOML or YAML (default: smoke.file of the config).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def smoke(state: CliState, target: str | None, check_file: Path | None, as_json: bool) -> int:
    """Run the declared smoke checks against one URL; exit 1 when one fails.

    With --file and --target no config file is needed.
    """
    from releasegate.errors import ConfigError
    from releasegate.gates.smoke import load_smoke_file, run_smoke

    host: str | None = target
    if check_file is None or host is None:
        settings = state.settings()
        if check_file is None:
            check_file = settings.resolve_path(settings.raw.smoke.file)
        host = host or settings.raw.smoke.host
    if not host:
        raise ConfigError("no target: pass --target URL or set smoke.host")
    report = run_smoke(load_smoke_file(check_file), host)
    if as_json:
        echo_json(report.to_dict())
    else:
        echo(report.render_text())
    return 0 if report.ok else 1


@click.command("gate")
@click.option("--target", metavar="URL", help="URL to load: green's port or the router.")
@click.option(
    "--compare-with",
    metavar="URL",
    help="Baseline URL (blue): same load at the same time, green judged against it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print Markdown.")
@click.option(
    "--junit",
    "junit_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write JUnit XML (one testcase per rule) to this file.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for Locust's CSV, HTML report and log (default: .releasegate/gates/<time>).",
)
@pass_state
def gate(
    state: CliState,
    target: str | None,
    compare_with: str | None,
    as_json: bool,
    as_markdown: bool,
    junit_file: Path | None,
    out_dir: Path | None,
) -> int:
    """Load the target with Locust and check the [slo] thresholds; exit 1 unless all pass."""
    from releasegate.gates.slo import run_gate

    if as_json and as_markdown:
        raise click.UsageError("--json and --markdown exclude each other")
    settings = state.settings()
    quiet = as_json or as_markdown
    result = run_gate(
        settings,
        target,
        compare_with=compare_with,
        out_dir=out_dir,
        progress=None if quiet else lambda line: echo(line, err=True),
    )
    if junit_file is not None:
        junit_file.parent.mkdir(parents=True, exist_ok=True)
        junit_file.write_text(result.render_junit(), encoding="utf-8")
    if as_json:
        echo_json(result.to_dict())
    elif as_markdown:
        echo(result.render_markdown())
    else:
        echo(redact(result.render_text()))
    return 0 if result.passed else 1
