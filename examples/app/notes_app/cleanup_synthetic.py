"""Delete what synthetic traffic with one marker wrote, and nothing else.

    python -m notes_app.cleanup_synthetic [--marker M] [--dry-run] [--json]

The marker is ``--marker``, else ``RELEASEGATE_SYNTHETIC_MARKER`` (which releasegate sets
for its hooks); the stores are ``NOTES_DATABASE_URL`` and ``NOTES_REDIS_URL``. What the
service wrote for a request carrying ``X-Releasegate-Synthetic: M`` (see
:mod:`notes_app.main`) goes:

- **Postgres**, in one transaction: the ``audit_log`` rows whose detail has
  ``"synthetic": "M"``, and the documents those rows record as created (with their
  chunks). A document is only deleted through its marked creation row.
- **Redis**: sessions (``sess:*`` and ``session:*``, either layout) whose JSON has
  ``"synthetic": "M"``; and cache entries that hold a deleted document or a list of its
  owner's documents, which would otherwise show it until they expire.

It prints what it deleted (``--dry-run``: what it would delete). Exit status: 0 done,
2 usage (no marker, a store variable not set), 3 a store unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
import redis

from notes_app.synthetic import FIELD, MARKER_RE

MARKER_ENV = "RELEASEGATE_SYNTHETIC_MARKER"
SESSION_PATTERNS = ("sess:*", "session:*")
CACHE_PATTERN = "cache:*"
BATCH = 500
# cache:{variant}:doc:{id} and cache:{variant}:docs:owner:{owner}:{limit}
_DOC_CACHE_RE = re.compile(r"^cache:[^:]+:doc:(\d+)$")
_OWNER_CACHE_RE = re.compile(r"^cache:[^:]+:docs:owner:(\d+):\d+$")


@dataclass
class CleanupReport:
    """What was (or, in a dry run, would be) deleted for one marker."""

    marker: str
    dry_run: bool
    audit_log: int = 0
    documents: list[int] = field(default_factory=list)
    document_chunks: int = 0
    sessions: int = 0
    cache_entries: int = 0

    def render(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        shown = ", ".join(str(i) for i in self.documents[:20])
        more = f" and {len(self.documents) - 20} more" if len(self.documents) > 20 else ""
        return "\n".join(
            [
                f"synthetic data marked {self.marker!r}: {verb}",
                f"  postgres: {len(self.documents)} documents"
                + (f" ({shown}{more})" if self.documents else "")
                + f", {self.document_chunks} chunks, {self.audit_log} audit_log rows",
                f"  redis: {self.sessions} sessions, {self.cache_entries} stale cache entries",
            ]
        )


def cleanup_postgres(url: str, report: CleanupReport) -> set[int]:
    """Delete the marked audit rows and the documents they created; the owners touched."""
    with psycopg.connect(url, connect_timeout=5, application_name="notes/cleanup") as conn:
        exists = conn.execute("SELECT to_regclass('public.audit_log')").fetchone()
        if exists is None or exists[0] is None:
            return set()
        with conn.transaction():
            rows = conn.execute(
                "SELECT id, action, detail FROM audit_log WHERE detail->>%s = %s FOR UPDATE",
                (FIELD, report.marker),
            ).fetchall()
            created = [
                (int(detail["document_id"]), detail.get("owner_id"))
                for _, action, detail in rows
                if action == "document.create" and str(detail.get("document_id", "")).isdigit()
            ]
            ids = sorted({doc for doc, _ in created})
            owners = {int(owner) for _, owner in created if isinstance(owner, int)}
            report.audit_log = len(rows)
            report.documents = ids
            if ids:
                chunks = conn.execute(
                    "SELECT count(*) FROM document_chunks WHERE document_id = ANY(%s)", (ids,)
                ).fetchone()
                report.document_chunks = int(chunks[0]) if chunks else 0
            if rows and not report.dry_run:
                # Chunks go with their document (ON DELETE CASCADE).
                conn.execute("DELETE FROM documents WHERE id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM audit_log WHERE id = ANY(%s)", ([r[0] for r in rows],))
    return owners


def _batches(keys: Iterable[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_marked(raw: bytes | None, marker: str) -> bool:
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        return False
    return isinstance(value, dict) and value.get(FIELD) == marker


def cleanup_redis(
    client: redis.Redis, report: CleanupReport, documents: Iterable[int], owners: Iterable[int]
) -> None:
    """Delete the marked sessions and the cache entries of deleted documents."""
    for pattern in SESSION_PATTERNS:
        for batch in _batches(client.scan_iter(match=pattern, count=1000)):
            values = client.mget(batch)
            doomed = [k for k, v in zip(batch, values, strict=True) if _is_marked(v, report.marker)]
            report.sessions += len(doomed)
            if doomed and not report.dry_run:
                client.delete(*doomed)
    docs, owner_ids = set(documents), set(owners)
    if not docs:
        return
    for batch in _batches(client.scan_iter(match=CACHE_PATTERN, count=1000)):
        stale = []
        for key in batch:
            text = key.decode(errors="replace")
            doc = _DOC_CACHE_RE.match(text)
            owner = _OWNER_CACHE_RE.match(text)
            if (doc and int(doc[1]) in docs) or (owner and int(owner[1]) in owner_ids):
                stale.append(key)
        report.cache_entries += len(stale)
        if stale and not report.dry_run:
            client.delete(*stale)


def cleanup(
    marker: str, database_url: str, redis_url: str, *, dry_run: bool = False
) -> CleanupReport:
    """Delete (or count, with ``dry_run``) everything marked ``marker`` in both stores."""
    if not MARKER_RE.match(marker):
        raise ValueError(f"invalid marker {marker[:80]!r}")
    report = CleanupReport(marker=marker, dry_run=dry_run)
    owners = cleanup_postgres(database_url, report)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        cleanup_redis(client, report, report.documents, owners)
    finally:
        client.close()
    return report


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="cleanup_synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--marker", default=env.get(MARKER_ENV, ""), help=f"default: ${MARKER_ENV}")
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    missing = [var for var in ("NOTES_DATABASE_URL", "NOTES_REDIS_URL") if not env.get(var)]
    if not args.marker or missing:
        what = f"--marker (or {MARKER_ENV})" if not args.marker else ", ".join(missing)
        print(f"error: {what} is not set", file=sys.stderr)
        return 2
    try:
        report = cleanup(
            args.marker, env["NOTES_DATABASE_URL"], env["NOTES_REDIS_URL"], dry_run=args.dry_run
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (psycopg.OperationalError, redis.exceptions.ConnectionError) as exc:
        lines = str(exc).strip().splitlines()
        detail = lines[-1] if lines else ""
        print(f"error: store unreachable: {type(exc).__name__}: {detail}", file=sys.stderr)
        return 3
    data: dict[str, Any] = asdict(report)
    print(json.dumps(data) if args.json else report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
