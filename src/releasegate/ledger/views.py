"""How a ledger row reads in ``history`` and ``status``: one release, one line."""

from __future__ import annotations

from releasegate.ledger.store import Release

_STORES = ("alembic", "redis", "qdrant")

HISTORY_HEADERS = (
    "id",
    "service",
    "kind",
    "started",
    "took",
    "outcome",
    "image",
    "versions",
    "performer",
)


def duration_text(release: Release) -> str:
    """``12.3s``, ``4m05s``; empty while it runs."""
    seconds = release.duration_s
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def image_text(release: Release) -> str:
    """The image released: its reference, else its digest; empty for store-only runs."""
    return release.image_ref or release.image_digest or ""


def versions_text(release: Release) -> str:
    """Every store version the row knows, ``before -> after`` (``?`` where unknown)."""
    parts = []
    for store in _STORES:
        before = getattr(release, f"{store}_before")
        after = getattr(release, f"{store}_after")
        if before is None and after is None:
            continue
        if before == after:
            parts.append(f"{store} {before} (unchanged)")
        else:
            parts.append(f"{store} {before or '?'} -> {after or '?'}")
    return "; ".join(parts)


def history_row(release: Release, depth: int = 0) -> tuple[str, ...]:
    """One row of the ``history`` table; ``depth`` 1 indents a release's own step."""
    return (
        ("  " * depth) + str(release.id),
        release.service,
        release.kind,
        f"{release.started_at:%Y-%m-%d %H:%M:%S}",
        duration_text(release),
        release.outcome,
        image_text(release),
        versions_text(release),
        release.performer,
    )


def one_line(release: Release) -> str:
    """``#12 release succeeded: app:v2, alembic 0001 -> 0003, 41.2s, at ... by ...``."""
    details = [d for d in (image_text(release), versions_text(release)) if d]
    took = duration_text(release)
    if took:
        details.append(took)
    text = f"#{release.id} {release.kind} {release.outcome}"
    if details:
        text += ": " + ", ".join(details)
    return f"{text} at {release.started_at:%Y-%m-%d %H:%M:%S} by {release.performer}"
