"""When a release applies its contract revisions: with --allow-contract, after a bake time
counted from the first promoted release that deferred them, or never by itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from releasegate.pipeline.steps import contract_timing

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
DAY = 24 * 3600.0


def test_nothing_queued_runs_nothing() -> None:
    assert contract_timing([], False, DAY, None, NOW) == ([], "")


def test_allow_contract_runs_them_now() -> None:
    assert contract_timing(["0006"], True, None, None, NOW) == (["0006"], "")
    assert contract_timing(["0006"], True, DAY, None, NOW) == (["0006"], "")


def test_without_flag_or_bake_they_wait_for_the_flag() -> None:
    run, why = contract_timing(["0006", "0007"], False, None, None, NOW)
    assert run == [] and "--allow-contract" in why


def test_the_release_that_first_defers_them_starts_the_bake() -> None:
    run, why = contract_timing(["0006"], False, DAY, None, NOW)
    assert run == [] and why == "baking 24h from this release's promotion"


def test_they_wait_until_the_bake_is_over() -> None:
    since = NOW - timedelta(hours=23)
    run, why = contract_timing(["0006"], False, DAY, since, NOW)
    assert run == [] and why == "baking until 2026-12-07 13:00 UTC"


def test_they_run_once_baked() -> None:
    since = NOW - timedelta(days=1)
    assert contract_timing(["0006", "0007"], False, DAY, since, NOW) == (["0006", "0007"], "")
