"""Every error class maps to its documented exit status (0-4, 130 when interrupted)."""

from __future__ import annotations

import pytest

from releasegate.errors import (
    CheckFailed,
    ConfigError,
    ExitCode,
    InfraError,
    Interrupted,
    LockNotObtained,
    MigrationFailed,
    MigrationScriptError,
    ReleasegateError,
    RollbackFailed,
    StateError,
    exit_code_for,
)


def test_exit_code_values() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 130]
    assert ExitCode.CHECK_FAILED == 1
    assert ExitCode.USAGE == 2
    assert ExitCode.INFRA == 3
    assert ExitCode.ROLLBACK_FAILED == 4
    assert ExitCode.PAUSED == 5
    assert ExitCode.INTERRUPTED == 130


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ReleasegateError("x"), 1),
        (CheckFailed("gate failed"), 1),
        (MigrationFailed("revision 0003 failed"), 1),
        (StateError("unknown revision"), 1),
        (ConfigError("bad key"), 2),
        (MigrationScriptError("no env.py"), 2),
        (InfraError("unreachable"), 3),
        (LockNotObtained("held"), 3),
        (RollbackFailed("rollback failed"), 4),
        (Interrupted("interrupted by SIGTERM"), 130),
    ],
)
def test_exit_code_for_each_error_class(error: ReleasegateError, code: int) -> None:
    assert exit_code_for(error) == code
    assert error.exit_code == code


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("x"), KeyError("k")])
def test_exit_code_for_plain_exception(error: Exception) -> None:
    assert exit_code_for(error) is ExitCode.CHECK_FAILED


def test_an_interrupt_maps_to_130() -> None:
    assert exit_code_for(KeyboardInterrupt("SIGTERM")) is ExitCode.INTERRUPTED


def test_subclass_relationships_callers_rely_on() -> None:
    assert issubclass(LockNotObtained, InfraError)
    assert issubclass(MigrationScriptError, ConfigError)
    assert issubclass(MigrationFailed, CheckFailed)
    assert not issubclass(RollbackFailed, CheckFailed)
    # An interrupt must pass through handlers of ordinary failures (a release's steps).
    assert issubclass(Interrupted, KeyboardInterrupt)
    assert not issubclass(Interrupted, Exception)
