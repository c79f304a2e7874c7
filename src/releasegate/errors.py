"""The error hierarchy of releasegate and the one place where errors become exit codes.

Core modules raise these; only :func:`releasegate.cli.main` turns them into an exit
status and a one-line message. Messages must never contain secrets: callers pass
URLs through :func:`releasegate.secrets.mask_url` first, and the CLI redacts
registered secrets again before printing.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses, documented in README.md."""

    OK = 0
    CHECK_FAILED = 1  # a check or gate failed (also: rolled back cleanly)
    USAGE = 2  # usage or config error
    INFRA = 3  # infrastructure unreachable or lock not obtained
    ROLLBACK_FAILED = 4  # rollback failed, a human is needed
    PAUSED = 5  # a release stopped at a canary pause: ``release --resume`` continues it
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


class ReleasegateError(Exception):
    """Base of every error releasegate reports to a user."""

    exit_code: ExitCode = ExitCode.CHECK_FAILED


class CheckFailed(ReleasegateError):
    """A check, lint, test or gate did not pass."""

    exit_code = ExitCode.CHECK_FAILED


class MigrationFailed(CheckFailed):
    """A migration revision failed; the database stays at the last good revision."""


class StateError(CheckFailed):
    """The target is in a state the requested operation refuses (e.g. unknown revision)."""


class ConfigError(ReleasegateError):
    """The configuration file, an override or an argument is invalid."""

    exit_code = ExitCode.USAGE


class MigrationScriptError(ConfigError):
    """The migrations folder is missing or a revision file cannot be loaded."""


class InfraError(ReleasegateError):
    """A store, Docker or the router cannot be reached."""

    exit_code = ExitCode.INFRA


class LockNotObtained(InfraError):
    """Another runner holds the release lock."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped an operation after it closed its records; the message
    says where it stopped.

    A KeyboardInterrupt, not a :class:`ReleasegateError`: whoever cleans up after Ctrl-C
    (the release pipeline rolls back) must not mistake it for an ordinary failed step.
    """

    exit_code = ExitCode.INTERRUPTED


class RollbackFailed(ReleasegateError):
    """An automatic rollback did not complete; a human is needed."""

    exit_code = ExitCode.ROLLBACK_FAILED


def exit_code_for(exc: BaseException) -> ExitCode:
    """Map any exception to the exit status the CLI returns for it."""
    if isinstance(exc, ReleasegateError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.CHECK_FAILED
