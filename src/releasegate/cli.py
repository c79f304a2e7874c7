"""The ``releasegate`` command line: parses arguments, calls core functions, prints.

Only click is imported at start-up; each command imports the core module it needs
when it runs, so ``releasegate --help`` stays fast. Errors become exit codes in
:func:`main`, through :func:`releasegate.errors.exit_code_for`.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click

from releasegate import __version__
from releasegate.errors import ExitCode, Interrupted

if TYPE_CHECKING:
    from releasegate.config import Settings


@dataclass
class CliState:
    config_path: str | None
    debug: bool

    def settings(self) -> Settings:
        from releasegate.config import load_config

        return load_config(self.config_path)


pass_state = click.make_pass_decorator(CliState)


def _echo(text: str = "", *, err: bool = False) -> None:
    from releasegate.output import echo

    echo(text, err=err)


def _echo_json(data: Any) -> None:
    from releasegate.output import echo_json

    echo_json(data)


# Command groups that live in their own modules under releasegate/commands/, imported only
# when invoked; the short help is kept here so ``--help`` does not import them.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "backup": (
        "releasegate.commands.backup:backup",
        "Restore points of every store: create, verify, restore, prune.",
    ),
    "router": (
        "releasegate.commands.router:router",
        "HAProxy in front of blue and green, driven by its runtime API.",
    ),
    "smoke": ("releasegate.commands.gates:smoke", "Run the smoke checks against one URL."),
    "gate": ("releasegate.commands.gates:gate", "Run the Locust SLO gate against one URL."),
    "build": ("releasegate.commands.deploy:build", "Build the service image (offline or not)."),
    "deploy": ("releasegate.commands.deploy:deploy", "Run an image as blue or green; wait ready."),
    "ps": ("releasegate.commands.deploy:ps", "Show both colors: image, health, port, weight."),
    "stop": ("releasegate.commands.deploy:stop", "Stop and remove one color's container."),
    "release": (
        "releasegate.commands.release:release",
        "The whole upgrade: backup, migrate, deploy, gates, promote; rollback on failure.",
    ),
    "rollback": (
        "releasegate.commands.release:rollback",
        "Undo the last (or a named) release, and verify.",
    ),
    "status": (
        "releasegate.commands.status:status",
        "Every store's version, the last backup and the last release.",
    ),
    "history": (
        "releasegate.commands.ledger:history",
        "List releases recorded in the ledger, newest first: one row per release.",
    ),
    "ledger": (
        "releasegate.commands.ledger:ledger",
        "The release ledger's own setup (a separate owner role).",
    ),
    "init": (
        "releasegate.commands.init:init",
        "Set up releasegate in a service repository.",
    ),
}


class _Interruption(Exception):
    """Carries a KeyboardInterrupt past click, which would print a blank line and Abort."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__(str(interrupt))
        self.interrupt = interrupt


class LazyGroup(click.Group):
    """A click group that imports the modules of :data:`LAZY_COMMANDS` on first use."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interruption(exc) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            import importlib

            module_name, _, attribute = LAZY_COMMANDS[cmd_name][0].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                command = self.commands[name]
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(formatter.width)))
            else:
                rows.append((name, LAZY_COMMANDS[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config_path",
    envvar="RELEASEGATE_CONFIG",
    metavar="PATH",
    help="Config file (default: ./releasegate.toml).",
)
@click.option("--debug", is_flag=True, envvar="RELEASEGATE_DEBUG", help="Show tracebacks.")
@click.version_option(__version__, prog_name="releasegate")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """Boring service upgrades: safe migrations, verified restore points, gated deploys.

    Exit codes: 0 success, 1 a check or gate failed, 2 usage or config error (also:
    no command, which prints this help), 3 infrastructure unreachable or lock not
    obtained, 4 rollback failed, 130 interrupted (Ctrl-C, SIGTERM).
    """
    ctx.obj = CliState(config_path=config_path, debug=debug)


# -- config ---------------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def config_check(state: CliState, as_json: bool) -> int:
    """Validate the config and what it refers to (migrations, smoke file, locustfile,
    hooks, build); print it resolved, with every secret masked."""
    from releasegate.validate import require_valid

    settings = state.settings()
    require_valid(settings)
    resolved = settings.describe()
    if as_json:
        _echo_json(resolved)
    else:
        from releasegate.output import table

        rows = []
        for section, values in resolved.items():
            if isinstance(values, dict):
                rows += [(f"{section}.{key}", value) for key, value in values.items()]
            else:
                rows.append((section, values))
        _echo(table(["key", "value"], rows))
    # A config whose database URL is missing is not ready to use.
    settings.postgres_url()
    return 0


# -- migrate --------------------------------------------------------------------------


@cli.group("migrate")
def migrate() -> None:
    """See, lint, apply, test and undo migrations of every store."""


STORE_OPTION = click.option(
    "--store",
    type=click.Choice(["postgres", "redis", "qdrant"]),
    help="Only this store (default: every configured store, in order).",
)


def _print_postgres_status(result: Any) -> None:
    from releasegate.migrations.commands import DbState, format_revisions

    _echo(f"postgres: {result.target}")
    _echo(f"  current:  {format_revisions(result.current)}")
    _echo(f"  head:     {', '.join(result.heads) or '(no revisions)'}")
    if result.state is DbState.NEVER_MIGRATED:
        _echo("  state:    never migrated (no alembic_version table)")
    elif result.state is DbState.UP_TO_DATE:
        _echo("  state:    up to date")
    elif result.state is DbState.MULTIPLE_HEADS:
        _echo("  state:    multiple heads")
    if result.pending:
        _echo(f"  pending:  {len(result.pending)}")
        for rev in result.pending:
            _echo(f"    {rev.id}  {rev.doc}")


def _print_store_status(store: str, result: Any) -> None:
    if store == "postgres":
        _print_postgres_status(result)
    else:
        data = result.to_dict()
        current = data.get("current", data.get("version"))
        _echo(f"{store}: {data['target']}")
        _echo(f"  current:  {current}")
        pending = data.get("pending", [])
        _echo(f"  pending:  {len(pending)}" if pending else "  state:    up to date")
        for item in pending:
            _echo(f"    {item.get('version')}  {item.get('doc') or item.get('name') or ''}")
        if data.get("expansion"):
            _echo(f"  expanded: {data['expansion']['note']}")
    for problem in result.problems:
        _echo(f"  problem:  {problem}")


def _kept_after_rollback(settings: Any) -> str | None:
    """What the newest release's rollback kept on purpose (e.g. an expanded schema)."""
    from releasegate import db

    with db.connect(settings.postgres_url(), "migrate status") as conn:
        found = conn.execute("SELECT to_regclass('releasegate.releases')").fetchone()
        if found is None or found[0] is None:
            return None
        row = conn.execute(
            "SELECT id, summary -> 'kept_after_rollback' FROM releasegate.releases"
            " WHERE service = %s AND parent_id IS NULL AND kind IN ('release', 'rollback')"
            " ORDER BY id DESC LIMIT 1",
            (settings.service,),
        ).fetchone()
    if row is None or not row[1]:
        return None
    return f"after the rollback of release {row[0]}: " + "; ".join(str(k) for k in row[1])


@migrate.command("status")
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per store).")
@pass_state
def migrate_status(state: CliState, store: str | None, as_json: bool) -> int:
    """Where each store stands: current version, head, pending; exit 1 on a problem.

    Exit 2 when the Postgres migrations have several heads, as up, plan and test.
    """
    from releasegate.migrations import stores

    settings = state.settings()
    results = stores.status(settings, stores.select_stores(settings, store))
    kept = _kept_after_rollback(settings) if "postgres" in results else None
    if as_json:
        data = {name: result.to_dict() for name, result in results.items()}
        if "postgres" in data:
            data["postgres"]["kept_after_rollback"] = kept
        _echo_json(data)
    else:
        for name, result in results.items():
            _print_store_status(name, result)
            if name == "postgres" and kept:
                _echo(f"  kept:     {kept}")
    if "postgres" in results:
        from releasegate.migrations.commands import require_single_head

        require_single_head(results["postgres"])
    return 0 if all(result.ok for result in results.values()) else 1


def _print_step(step: Any) -> None:
    mark = "ok" if step.status == "ok" else step.status.upper()
    note = f"  {step.note}" if step.note else ""
    _echo(
        f"  {step.store:<8} {step.direction:<4} {step.version:<16} {mark:<7}"
        f" {step.duration_s * 1000:8.0f} ms{note}"
    )


def _print_migrate_results(results: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _echo_json({store: result.to_dict() for store, result in results.items()})
        return
    for store, result in results.items():
        data = result.to_dict()
        done = "" if result.steps else " (nothing to do)"
        _echo(
            f"{store}: {data['before']} -> {data['after']}{done}"
            f" (ledger release {data['release_id']})"
        )


@migrate.command("up")
@STORE_OPTION
@click.option("--to", "to", metavar="REV", help="Stop at this version (needs --store).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per store).")
@pass_state
def migrate_up(state: CliState, store: str | None, to: str | None, as_json: bool) -> int:
    """Apply pending migrations: Postgres, then Redis, then Qdrant, under the release lock.

    With --to and no --store, the version is a Postgres revision.
    """
    from releasegate.migrations import stores

    settings = state.settings()
    selected = stores.select_stores(settings, store or ("postgres" if to else None))
    results = stores.up(settings, selected, to, on_step=None if as_json else _print_step)
    _print_migrate_results(results, as_json)
    return 0


@migrate.command("down")
@STORE_OPTION
@click.option("--to", "to", metavar="REV", required=True, help="Target version, or 'base'.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def migrate_down(state: CliState, store: str | None, to: str, as_json: bool) -> int:
    """Undo one store's migrations down to REV (default store: postgres)."""
    from releasegate.migrations import stores

    settings = state.settings()
    [selected] = stores.select_stores(settings, store or "postgres")
    result = stores.down(settings, selected, to, on_step=None if as_json else _print_step)
    _print_migrate_results({selected: result}, as_json)
    return 0


@migrate.command("plan")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print Markdown.")
@click.option(
    "--from",
    "from_revision",
    metavar="REV",
    help="Plan from this revision (or 'base') instead of reading the database.",
)
@pass_state
def migrate_plan(
    state: CliState, as_json: bool, as_markdown: bool, from_revision: str | None
) -> int:
    """The SQL of <current>:head, with phases and squawk lint; exit 1 at lint.fail_on."""
    from releasegate.migrations.plan import plan, render_markdown, render_text

    if as_json and as_markdown:
        raise click.UsageError("--json and --markdown exclude each other")
    result = plan(state.settings(), from_revision)
    if as_json:
        _echo_json(result.to_dict())
    elif as_markdown:
        _echo(render_markdown(result))
    else:
        _echo(render_text(result))
    return 1 if result.lint_failed else 0


@migrate.command("test")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--keep-going", is_flag=True, help="Stamp past a failed step and try every revision.")
@pass_state
def migrate_test(state: CliState, as_json: bool, keep_going: bool) -> int:
    """Stairway-test the chain on a throwaway database; check drift and leftovers."""
    from releasegate.migrations.harness import render_text, run_test

    report = run_test(state.settings(), progress=None if as_json else _echo, keep_going=keep_going)
    if as_json:
        _echo_json(report.to_dict())
    else:
        _echo(render_text(report))
    return 0 if report.ok else 1


@migrate.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def migrate_verify(state: CliState, as_json: bool) -> int:
    """Check that the live schema equals what the migrations produce; list differences."""
    from releasegate.migrations.commands import format_revisions
    from releasegate.migrations.verify import verify

    report = verify(state.settings())
    if as_json:
        _echo_json(report.to_dict())
    else:
        _echo(f"database {report.target} at {format_revisions(report.revision)}:")
        if report.ok:
            _echo("schema matches the migrations")
        for difference in report.differences:
            _echo(f"  {difference.describe()}")
    return 0 if report.ok else 1


# -- entry point ----------------------------------------------------------------------


def _debug_requested(argv: Sequence[str]) -> bool:
    flag = os.environ.get("RELEASEGATE_DEBUG", "").strip().lower()
    return "--debug" in argv or flag in ("1", "true", "yes", "on")


def _interrupt_on_sigterm(signum: int, _frame: object) -> None:
    # KeyboardInterrupt, not an exception of our own: psycopg cancels the running query
    # on it, and every handler that cleans up after Ctrl-C cleans up after SIGTERM too.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interruption(exc: BaseException) -> str:
    interrupt = exc.interrupt if isinstance(exc, _Interruption) else exc
    if isinstance(interrupt, Interrupted):
        return str(interrupt)  # the operation closed its records and says where it stopped
    how = str(interrupt) or "Ctrl-C"
    return f"interrupted by {how}: see 'releasegate history' for what was recorded"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI and exit with the status that :mod:`releasegate.errors` assigns.

    SIGTERM (a cancelled CI job) is handled like Ctrl-C: the operation stops where it
    is, closes its ledger row, prints one ``error:`` line and exits 130.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        result = cli.main(args=args, prog_name="releasegate", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        # A group without a command: the help itself is the answer, on stdout, not an
        # error line; exit 2 all the same, so that a script with an empty command fails.
        _echo(exc.ctx.get_help())
        code = int(ExitCode.USAGE)
    except click.UsageError as exc:
        # One line like every other error; the usage text is one --help away.
        where = exc.ctx.command_path if exc.ctx else "releasegate"
        _echo(f"error: {exc.format_message()} (see '{where} --help')", err=True)
        code = exc.exit_code
    except click.ClickException as exc:
        _echo(f"error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except click.exceptions.Abort:
        _echo("error: aborted", err=True)
        code = int(ExitCode.INTERRUPTED)
    except (KeyboardInterrupt, _Interruption) as exc:
        _echo(f"error: {_interruption(exc)}", err=True)
        code = int(ExitCode.INTERRUPTED)
    except SystemExit as exc:
        # Only code releasegate runs (env.py, a migration, a hook) calls sys.exit here:
        # click's own exits are click.exceptions.Exit.
        _echo(f"error: stopped by sys.exit({exc.code!r}) in code that releasegate ran", err=True)
        code = int(ExitCode.CHECK_FAILED)
    except Exception as exc:
        from releasegate.errors import ReleasegateError, exit_code_for

        if debug:
            import traceback

            _echo(traceback.format_exc().rstrip(), err=True)
        if isinstance(exc, ReleasegateError):
            _echo(f"error: {exc}", err=True)
        else:
            _echo(
                f"internal error: {type(exc).__name__}: {exc}"
                + ("" if debug else " (run with --debug for the traceback)"),
                err=True,
            )
        code = int(exit_code_for(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code)
