"""Writing a release's JSON and Markdown reports next to each other, atomically.

Each file is written to a temporary name in the same folder, synced and renamed into
place, so a reader (a CI artifact upload, a person) never sees half a report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from releasegate.fileio import write_atomic
from releasegate.report.render import SUMMARY_LIMIT_BYTES, render_markdown
from releasegate.report.values import redact_data

_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ReportPaths:
    """Where the reports of one release were written."""

    json: Path
    markdown: Path

    def to_dict(self) -> dict[str, str]:
        return {"json": str(self.json), "markdown": str(self.markdown)}


def report_stem(result: Mapping[str, Any]) -> str:
    """``release-<id>``; a result without a ledger id is named by the time instead."""
    rid = result.get("release_id")
    if rid is None or rid == "":
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"release-unrecorded-{stamp}"
    # The id names a file: nothing in it may climb out of the folder.
    return "release-" + (_UNSAFE_RE.sub("_", str(rid)).strip("._") or "unknown")


def write_reports(
    result: Mapping[str, Any], out_dir: Path, *, limit_bytes: int = SUMMARY_LIMIT_BYTES
) -> ReportPaths:
    """Write ``release-<id>.json`` and ``release-<id>.md`` into ``out_dir`` (created).

    The JSON is the whole result with secrets redacted; the Markdown is
    :func:`render_markdown` within ``limit_bytes``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(result)
    data = redact_data(result)
    json_path = write_atomic(
        out_dir / f"{stem}.json",
        json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n",
    )
    md_path = write_atomic(out_dir / f"{stem}.md", render_markdown(result, limit_bytes=limit_bytes))
    return ReportPaths(json=json_path, markdown=md_path)
