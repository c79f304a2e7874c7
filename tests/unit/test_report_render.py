"""The Markdown and plain-text evidence reports of a release, and the report files."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from releasegate import secrets
from releasegate.backup.base import FileEntry, StoreBackup
from releasegate.backup.manifest import Manifest
from releasegate.gates.histogram import Histogram
from releasegate.gates.locust_runner import EndpointStats, LocustPlan, LocustRun, WindowStats
from releasegate.gates.slo_result import GateResult
from releasegate.gates.slo_verdicts import evaluate
from releasegate.gates.smoke import CheckResult, SmokeReport
from releasegate.gates.thresholds import parse_thresholds
from releasegate.migrations.lint import FailOn, Finding, Severity
from releasegate.migrations.phases import Phase
from releasegate.migrations.plan import MigrationPlan, PlannedRevision, PlannedStatement
from releasegate.report.files import report_stem, write_reports
from releasegate.report.render import render_markdown
from releasegate.report.text import render_text
from releasegate.report.values import status_word
from releasegate.router.state import ColorState, RouterState
from releasegate.router.switching import SwitchResult
from releasegate.secrets import register_secret

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Each test starts with no registered secrets and leaves none behind."""
    registry: set[str] = set()
    monkeypatch.setattr(secrets, "_registered", registry)
    yield registry


# -- a realistic result, built from the real objects' to_dict() --------------------------


def _plan() -> dict[str, Any]:
    finding = Finding(
        rule="require-concurrent-index-creation",
        severity=Severity.WARNING,
        message="During normal index creation, table updates are blocked",
        help=None,
        line=1,
        statement_index=0,
    )
    plan = MigrationPlan(
        target="head",
        current=("0002",),
        revisions=[
            PlannedRevision(
                "0003",
                "add users.display_name | backfill",
                Phase.EXPAND,
                False,
                None,
                [
                    PlannedStatement("SET lock_timeout = '5s'", None, []),
                    PlannedStatement(
                        "ALTER TABLE users ADD COLUMN display_name text", Phase.EXPAND, []
                    ),
                ],
            ),
            PlannedRevision(
                "0004",
                "index documents by owner",
                Phase.EXPAND,
                False,
                None,
                [
                    PlannedStatement(
                        "CREATE INDEX ix_owner ON documents (owner_id)", None, [finding]
                    )
                ],
            ),
            PlannedRevision(
                "0006",
                "drop users.full_name",
                Phase.CONTRACT,
                True,
                "downgrade() raises NotImplementedError",
                [PlannedStatement("ALTER TABLE users DROP COLUMN full_name", Phase.CONTRACT, [])],
            ),
        ],
        fail_on=FailOn.ERROR,
    )
    return {
        "postgres": plan.to_dict(),
        "redis": {
            "current": "base",
            "head": "0001",
            "pending": [{"version": "0001", "name": "sessions", "doc": "sessions to snake_case"}],
        },
        "qdrant": {
            "version": "base",
            "pending": [
                {
                    "version": "0001",
                    "name": "reembed",
                    "collection": "documents",
                    "from": "documents__v1",
                    "to": "documents__v2",
                    "doc": "re-embed titles at 128 dimensions",
                }
            ],
            "problems": [],
        },
        "contract": ["0006"],
        "blocked": False,
    }


def _manifest() -> dict[str, Any]:
    manifest = Manifest(
        set_id="20261121T150001.250Z",
        service="notes",
        created_at="2026-11-21T15:00:01.250000+00:00",
        performer="ci (github)",
        git_sha="ab12cd34ef56",
        releasegate_version="0.1.0",
        versions={"alembic": "0002", "redis": None, "qdrant": "base"},
        stores=[
            StoreBackup(
                "postgres",
                "pg_dump custom",
                [FileEntry("postgres.dump", "9b1c" + "0" * 60, 48213)],
                {"tables": {"public.users": 5000, "public.documents": 15001}, "rows": 20001},
                {"alembic": "0002"},
                {"pg_dump": "15.18", "postgres": "15.18"},
                {"dump": 1.2},
            ),
            StoreBackup(
                "redis",
                "scan+dump",
                [FileEntry("redis.rgdump", "77aa" + "1" * 60, 3100)],
                {"keys": 1200, "with_ttl": 1000, "types": {"string": 1200}, "patterns": {}},
            ),
            StoreBackup(
                "qdrant",
                "qdrant scroll",
                [FileEntry("qdrant/documents.jsonl", "5e5e" + "2" * 60, 90000)],
                {"collections": {"documents__v1": {"points": 300}}, "aliases": {}},
            ),
        ],
        timings={"total": 2.04},
        ledger_release_id=12,
    )
    return manifest.to_dict()


def _slo(tmp_path: Path) -> dict[str, Any]:
    histogram = Histogram()
    for i in range(400):
        histogram.add(50.0 + i)  # p95 about 430 ms: the p95 rule fails
    stats = WindowStats(
        duration_s=30.0, entries=[EndpointStats("GET", "/documents", 400, 2, histogram)]
    )
    plan = LocustPlan(
        locustfile=tmp_path / "locustfile.py",
        host="http://127.0.0.1:18082",
        out_dir=tmp_path / "slo",
        users=20,
        spawn_rate=10,
        warmup=5,
        duration=30,
    )
    run = LocustRun(plan=plan, exit_code=0, wall_s=36.0, window=stats)
    rules = parse_thresholds({"total": ["p95 < 300ms", "error_rate < 1%"]})
    evaluation = evaluate(rules, stats, min_requests=100)
    gate = GateResult(
        run.target, evaluation.verdict, evaluation.reasons, evaluation.rules, run, plan.out_dir
    )
    return {
        **gate.to_dict(),
        "paths": {"html": str(plan.html_report), "csv_prefix": str(plan.csv_prefix)},
    }


def _state(live: str) -> RouterState:
    def color(name: str) -> ColorState:
        weight = 100 if name == live else 0
        admin = "ready" if name == live else "drain"
        return ColorState(name, "127.0.0.1:1", admin, "running", "UP", weight, "L7OK", True, 0, 9)

    return RouterState("notes", "/run/admin.sock", {c: color(c) for c in ("blue", "green")})


def sample_result(tmp_path: Path) -> dict[str, Any]:
    """A release whose SLO gate failed after promotion and that was rolled back."""
    smoke = SmokeReport(
        "http://127.0.0.1:18082",
        [
            CheckResult("health", "GET", "/healthz", True, 200, 2.5, 1),
            CheckResult("list documents", "GET", "/documents", True, 200, 12.25, 1),
            CheckResult(
                "version", "GET", "/version", False, 500, 3.0, 3, ["status 500, expected 200"]
            ),
        ],
        0.42,
    ).to_dict()
    promote = SwitchResult("promote", _state("blue"), _state("green"), ["set weight"], 0.0012, 0.04)
    back = SwitchResult("rollback", _state("green"), _state("blue"), ["set weight"], 0.0009, 0.03)
    return {
        "release_id": 12,
        "service": "notes",
        "kind": "release",
        "image": {
            "ref": "notes:ab12cd34ef56",
            "digest": "sha256:" + "d" * 64,
            "previous": "notes:0011aa22bb33",
        },
        "performer": "ci (github)",
        "git_sha": "ab12cd34ef56" + "0" * 28,
        "outcome": "rolled_back",
        "exit_code": 1,
        "started_at": "2026-11-21T15:00:00+00:00",
        "finished_at": "2026-11-21T15:01:33+00:00",
        "duration_s": 93.2,
        "colors": {"live_before": "blue", "target": "green", "live_after": "blue"},
        "steps": [
            {"name": "preflight", "status": "ok", "duration_s": 0.4, "summary": "3 stores"},
            {"name": "backup", "status": "ok", "duration_s": 2.1, "summary": "set 2026"},
            {"name": "migrate", "status": "ok", "duration_s": 4.0, "summary": "0002 -> 0006"},
            {"name": "slo gate", "status": "failed", "duration_s": 36.0, "summary": "p95"},
            {"name": "rollback", "status": "rolled_back", "duration_s": 1.5, "summary": ""},
        ],
        "plan": _plan(),
        "backup": _manifest(),
        "backup_verify": {"ok": True, "differences": []},
        "migrations": {
            "postgres": {
                "release_id": 12,
                "direction": "up",
                "before": "0002",
                "after": "0006",
                "lock_wait_s": 0.0,
                "steps": [
                    {
                        "revision": "0003",
                        "direction": "up",
                        "status": "ok",
                        "duration_s": 0.8,
                        "attempts": 2,
                        "error": None,
                    }
                ],
            }
        },
        "deploy": {
            "color": "green",
            "container": "notes-green",
            "image": "notes:ab12cd34ef56",
            "ready_s": 3.1,
        },
        "smoke": smoke,
        "slo": _slo(tmp_path),
        "router": [promote.to_dict(), back.to_dict()],
        "watch": {},
        "rollback": {
            "reason": "slo gate failed: total: p95 < 300ms",
            "steps": [
                {"name": "traffic back to blue", "status": "ok", "duration_s": 0.1, "detail": {}}
            ],
            "kept": ["postgres kept at 0005: irreversible revision 0005 ran before promotion"],
            "verification": {
                "ok": False,
                "checks": [
                    {"item": "live color", "expected": "blue", "actual": "blue", "ok": True},
                    {
                        "item": "postgres revision",
                        "expected": "0002",
                        "actual": "0006",
                        "ok": False,
                    },
                ],
            },
            "manual_steps": [
                "releasegate backup restore 20261121T150001.250Z --store postgres --yes",
                "releasegate migrate verify",
            ],
        },
        "error": "slo gate failed: total: p95 < 300ms (observed 430.0ms)",
    }


def _tables(markdown: str) -> list[list[str]]:
    """The GFM tables of a document, each as its lines."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _cells(row: str) -> int:
    """Cells of a row as GitHub splits it: a backslash escapes the next character."""
    pipes, i = 0, 0
    while i < len(row):
        if row[i] == "\\":
            i += 2
            continue
        pipes += row[i] == "|"
        i += 1
    return pipes - 1


# -- Markdown -------------------------------------------------------------------------------


def test_markdown_has_every_section(tmp_path: Path) -> None:
    md = render_markdown(sample_result(tmp_path))
    lines = md.splitlines()
    assert lines[0] == "## notes release 12: ROLLED BACK"
    assert "- **Outcome:** **ROLLED BACK** (exit code 1)" in lines
    assert f"digest `sha256:{'d' * 64}`" in md and "previously `notes:0011aa22bb33`" in md
    assert "- **Performer:** ci (github)" in lines
    assert "- **Colors:** live before blue, target green, live after blue" in lines
    assert "- **Duration:** 93.2s (started 2026-11-21T15:00:00+00:00," in md
    # Steps, in order, with their timings.
    assert "| 1 | preflight | ok | 0.4s | 3 stores |" in lines
    assert "| 4 | slo gate | **failed** | 36.0s | p95 |" in lines
    # The plan: per-revision phase, irreversibility and findings, SQL in <details>.
    assert "| `0003` | expand | | 0 | add users.display\\|backfill |" not in md
    assert "| `0003` | expand |  | 0 | add users.display_name \\| backfill |" in lines
    assert "| `0004` | expand |  | 1 | index documents by owner |" in lines
    assert "| `0006` | contract (declared) | downgrade() raises NotImplementedError | 0 |" in md
    assert "Contract revisions (cannot be rolled back automatically): `0006`." in md
    assert "<details><summary>0004: index documents by owner (expand, 1 statements," in md
    assert (
        "```sql\nSET lock_timeout = '5s';\nALTER TABLE users ADD COLUMN display_name text;\n```"
        in md
    )
    assert "| warning | `require-concurrent-index-creation` | During normal index" in md
    assert "| `0001` | sessions to snake_case |" in lines
    assert "| `0001` | documents | documents__v1 → documents__v2 | re-embed titles" in md
    # The backup: set, per-store summary, checksums, counts.
    assert "Backup set `20261121T150001.250Z`" in md and "3 files, 138.0 KiB, in 2.0s" in md
    assert "| postgres | pg_dump custom | 1 | 47.1 KiB | 20,001 rows in 2 tables |" in md
    assert "| redis | scan+dump | 1 | 3.0 KiB | 1,200 keys (1,000 with TTL) |" in md
    assert "| qdrant | qdrant scroll | 1 | 87.9 KiB | 300 points in 1 collections |" in md
    assert f"| postgres | `postgres.dump` | 47.1 KiB | `9b1c{'0' * 60}` |" in lines
    assert "| `public.documents` | 15,001 |" in lines
    assert "**Verified:** restored into scratch places, counts match." in md
    assert "| postgres | `0003` | up | ok | 0.8s | 2 attempts |" in lines
    assert "Color **green**: container `notes-green`" in md
    # Smoke and SLO.
    assert "### Smoke checks: FAILED" in md and "2 of 3 checks passed" in md
    assert (
        "| version | `GET /version` | 500 | 3.0 | 3 | **FAIL** | status 500, expected 200 |" in md
    )
    assert "### SLO gate: FAIL" in lines
    assert re.search(r"\| total \| `p95 < 300ms` \| 4\d\d\.\dms \| \*\*fail\*\* \|", md)
    assert "| total | `error_rate < 1%` | 0.50% | pass |" in md
    assert "400 requests in 30.0s after a 5.0s warm-up (20 users)" in md
    assert f"- Locust HTML report: `{tmp_path / 'slo' / 'locust_report.html'}`" in lines
    assert f"- Locust CSV: `{tmp_path / 'slo' / 'locust'}_stats.csv`" in lines
    # Traffic: weights per color before and after each switch.
    assert "| promote | blue | green | blue 100, green 0 | blue 0, green 100 | 1.2 | 40 |" in md
    assert "| rollback | green | blue | blue 0, green 100 | blue 100, green 0 | 0.9 | 30 |" in md
    # Rollback: steps, verification and manual steps.
    assert "**Reason:** slo gate failed: total: p95 < 300ms" in md
    assert "**Verification: FAILED** (1 of 2 checks match)" in md
    assert "- postgres kept at 0005: irreversible revision 0005 ran before promotion" in lines
    assert "| postgres revision | `0002` | `0006` | **MISMATCH** |" in lines
    assert (
        "```sh\nreleasegate backup restore 20261121T150001.250Z --store postgres --yes\n"
        "releasegate migrate verify\n```"
    ) in md
    assert "### Error\n\n```\nslo gate failed: total: p95 < 300ms (observed 430.0ms)\n```" in md


def test_every_table_is_rectangular(tmp_path: Path) -> None:
    """A pipe in a value is escaped, so no row gains or loses a column."""
    result = sample_result(tmp_path)
    result["steps"][0]["summary"] = "a | b || c \\| d"
    tables = _tables(render_markdown(result))
    assert len(tables) >= 10
    for rows in tables:
        assert re.fullmatch(r"\|(---\|)+", rows[1])
        assert {_cells(row) for row in rows} == {_cells(rows[0])}, rows


def test_backticks_and_html_cannot_break_the_layout(tmp_path: Path) -> None:
    result = sample_result(tmp_path)
    statement = result["plan"]["postgres"]["revisions"][0]["statements"][1]
    statement["sql"] = "SELECT '```' AS fence -- ```` inside"
    result["plan"]["postgres"]["revisions"][0]["doc"] = "</details><script>x</script>"
    md = render_markdown(result)
    assert "`````sql\nSET lock_timeout = '5s';\nSELECT '```' AS fence -- ```` inside;\n`````" in md
    assert "<script>" not in md and "&lt;/details>&lt;script>x&lt;/script>" in md
    assert md.count("<details>") == md.count("</details>")


@pytest.mark.parametrize(
    ("outcome", "word"),
    [
        ("succeeded", "SUCCEEDED"),
        ("rolled_back", "ROLLED BACK"),
        ("rollback_failed", "ROLLBACK FAILED"),
        ("dry_run", "DRY RUN"),
        ("blocked", "BLOCKED"),
        ("something_new", "SOMETHING NEW"),
        (None, "UNKNOWN"),
    ],
)
def test_status_words(outcome: str | None, word: str) -> None:
    assert status_word(outcome) == word
    md = render_markdown({"release_id": 1, "service": "svc", "outcome": outcome})
    assert md.splitlines()[0] == f"## svc release 1: {word}"


def test_a_result_with_steps_that_did_not_run() -> None:
    result = {
        "release_id": 4,
        "service": "notes",
        "kind": "release",
        "outcome": "blocked",
        "exit_code": 1,
        "image": None,
        "colors": None,
        "steps": [{"name": "plan", "status": "failed", "duration_s": 0.2, "summary": None}],
        "plan": {"postgres": None, "redis": None, "qdrant": None, "contract": [], "blocked": True},
        "backup": None,
        "smoke": None,
        "slo": None,
        "router": None,
        "rollback": None,
        "error": None,
    }
    md = render_markdown(result)
    assert md.startswith("## notes release 4: BLOCKED\n")
    assert "| 1 | plan | **failed** | 0.2s |  |" in md
    assert "**Blocked:** the plan did not pass its checks." in md
    for absent in ("### Rollback", "### Error", "### Restore point", "### SLO gate", "Image"):
        assert absent not in md
    text = render_text(result)
    assert text.splitlines()[0] == "notes release 4: BLOCKED (exit code 1) in -"
    assert "plan: nothing pending; BLOCKED" in text


def _huge_result(tmp_path: Path) -> dict[str, Any]:
    result = sample_result(tmp_path)
    revision = result["plan"]["postgres"]["revisions"][0]
    revision["statements"] = [
        {
            "sql": f"UPDATE users SET display_name = full_name WHERE id = {i}",
            "phase": "data",
            "findings": [],
        }
        for i in range(50_000)
    ]
    tables = {f"public.t{i:06d}": i for i in range(100_000)}
    result["backup"]["stores"][0]["counts"] = {"tables": tables, "rows": sum(tables.values())}
    result["smoke"]["checks"] = [
        {**result["smoke"]["checks"][0], "name": f"check {i}"} for i in range(100_000)
    ]
    return result


def test_a_huge_result_fits_the_step_summary_limit(tmp_path: Path) -> None:
    result = _huge_result(tmp_path)
    started = time.perf_counter()
    md = render_markdown(result)
    elapsed = time.perf_counter() - started
    assert len(md.encode()) <= MIB
    assert elapsed < 20, elapsed
    assert md.splitlines()[0] == "## notes release 12: ROLLED BACK"
    assert "| 5 | rollback | **rolled_back** | 1.5s |  |" in md
    assert "| postgres revision | `0002` | `0006` | **MISMATCH** |" in md
    assert "releasegate backup restore 20261121T150001.250Z --store postgres --yes" in md
    # SQL bodies went first; long tables were cut with a pointer to the JSON report.
    assert "WHERE id = 49999" not in md
    assert "SQL omitted to fit the size limit (see the JSON report)." in md
    assert re.search(r"\n\n\.\.\. \d+ more rows \(see the JSON report\)\n", md)
    assert "| check 0 |" in md and "| check 99999 |" not in md


def test_sql_bodies_go_before_any_table_is_cut(tmp_path: Path) -> None:
    result = sample_result(tmp_path)
    result["plan"]["postgres"]["revisions"][0]["statements"] = [
        {"sql": f"UPDATE t SET x = {i} WHERE id = {i}", "phase": "data", "findings": []}
        for i in range(5000)
    ]
    full = render_markdown(result, limit_bytes=10 * MIB)
    assert "WHERE id = 4999;" in full and len(full.encode()) > 60_000
    cut = render_markdown(result, limit_bytes=60_000)
    assert len(cut.encode()) <= 60_000
    assert "SQL omitted to fit the size limit" in cut and "more rows" not in cut
    assert "| version | `GET /version` |" in cut


def test_small_limits_drop_the_optional_sections_then_cut(tmp_path: Path) -> None:
    md = render_markdown(_huge_result(tmp_path), limit_bytes=4000)
    assert len(md.encode()) <= 4000
    assert md.startswith("## notes release 12: ROLLED BACK\n")
    assert "| postgres revision | `0002` | `0006` | **MISMATCH** |" in md
    assert "releasegate migrate verify\n```" in md
    assert md.endswith(
        "traffic sections were left out to fit the size limit (see the JSON report).\n"
    )
    assert "### Migration plan" not in md
    # Below what even the kept sections need, the text is cut at a line and says so.
    cut = render_markdown(sample_result(tmp_path), limit_bytes=600)
    assert len(cut.encode()) <= 600
    assert cut.startswith("## notes release 12: ROLLED BACK\n")
    assert cut.endswith("\n\n... the report was cut to fit the size limit (see the JSON report)\n")
    assert len(render_markdown(sample_result(tmp_path), limit_bytes=10)) <= 10


def test_registered_secrets_never_appear(tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55"
    register_secret(secret)
    result = sample_result(tmp_path)
    result["error"] = f"connection to postgresql://app:{secret}@db/notes failed"
    result["steps"][0]["summary"] = f"token {secret} | used"
    result["plan"]["postgres"]["revisions"][0]["statements"][1]["sql"] = f"SELECT '{secret}'"
    result["smoke"]["checks"][2]["failures"] = [f"body contained {secret}"]
    result["slo"]["target"] = "http://user:other-pw@127.0.0.1:18082"
    result["rollback"]["manual_steps"].append(f"psql postgresql://app:{secret}@db/notes")
    result[f"key-{secret}"] = 1
    md = render_markdown(result)
    text = render_text(result)
    for output in (md, text):
        assert secret not in output and "other-pw" not in output
        assert "postgresql://app:***@db/notes" in output
    assert "SELECT '***';" in md and "token *** \\| used" in md
    assert "http://user:***@127.0.0.1:18082" in md
    paths = write_reports(result, tmp_path / "reports")
    for path in (paths.json, paths.markdown):
        assert secret not in path.read_text(encoding="utf-8")


# -- plain text ---------------------------------------------------------------------------


def test_text_summary(tmp_path: Path) -> None:
    text = render_text(sample_result(tmp_path))
    lines = text.splitlines()
    assert lines[0] == "notes release 12: ROLLED BACK (exit code 1) in 93.2s"
    assert lines[1] == f"image notes:ab12cd34ef56 sha256:{'d' * 64}; previous notes:0011aa22bb33"
    assert lines[2] == "by ci (github); git ab12cd34ef56; colors blue -> green, live blue"
    assert re.search(r"^slo gate\s+failed\s+36\.0s\s+p95$", text, re.M)
    assert "plan: postgres 3 pending, redis 1 pending, qdrant 1 pending (contract: 0006)" in lines
    assert "smoke: FAILED (2/3)" in lines
    assert "slo: fail (2 rules, not passed: total p95 < 300ms)" in lines
    assert "router: rollback green -> blue (switch 0.9 ms)" in lines
    assert "  verification: FAILED (1/2 checks match)" in lines
    assert "    postgres revision: expected 0002, found 0006" in lines
    assert lines[-3:] == [
        "  releasegate migrate verify",
        "",
        "error: slo gate failed: total: p95 < 300ms (observed 430.0ms)",
    ]
    assert "  kept: postgres kept at 0005: irreversible revision 0005 ran before promotion" in lines
    manual = lines.index("manual steps (a human must run these, in order):")
    assert lines[manual + 1].startswith("  releasegate backup restore 20261121T150001.250Z")


# -- the report files ------------------------------------------------------------------------


def test_write_reports(tmp_path: Path) -> None:
    result = sample_result(tmp_path)
    out = tmp_path / "out" / "nested"
    paths = write_reports(result, out)
    assert paths.json == out / "release-12.json" and paths.markdown == out / "release-12.md"
    assert json.loads(paths.json.read_text(encoding="utf-8")) == json.loads(json.dumps(result))
    assert paths.markdown.read_text(encoding="utf-8") == render_markdown(result)
    assert sorted(p.name for p in out.iterdir()) == ["release-12.json", "release-12.md"]
    assert paths.to_dict() == {"json": str(paths.json), "markdown": str(paths.markdown)}
    # Writing again replaces both files in place.
    result["outcome"] = "succeeded"
    write_reports(result, out)
    assert json.loads(paths.json.read_text(encoding="utf-8"))["outcome"] == "succeeded"
    assert sorted(p.name for p in out.iterdir()) == ["release-12.json", "release-12.md"]


def test_report_names_cannot_escape_the_folder() -> None:
    assert report_stem({"release_id": 7}) == "release-7"
    assert report_stem({"release_id": "../../etc/passwd"}) == "release-etc_passwd"
    assert re.fullmatch(r"release-unrecorded-\d{8}T\d{6}Z", report_stem({"release_id": None}))


def test_markdown_shows_a_stopped_color_s_log_tail_below_the_rollback_table(
    tmp_path: Path,
) -> None:
    result = sample_result(tmp_path)
    result["rollback"]["steps"].append(
        {
            "name": "stop green",
            "status": "ok",
            "duration_s": 0.4,
            "detail": {
                "removed": "notes-green",
                "log_tail": ["INFO started", "ERROR ``` boom on GET /documents"],
            },
        }
    )
    md = render_markdown(result)
    assert '| stop green | ok | 0.4s | {"removed":"notes-green"} |' in md
    assert "<details><summary>stop green: its last 2 log lines</summary>" in md
    assert "````\nINFO started\nERROR ``` boom on GET /documents\n````" in md
